"""Where an imported MosaicML deployment's handler code and packages come from.

MosaicML ran a deployment's `integrations` before starting it: `git_repo` items cloned code
(by default to /code/<repo name>, which `command` then put on PYTHONPATH) and `pip_packages`
items installed packages. Here there is no network at import time and no clone: each git
repository maps to a local checkout given on the command line (`--git-repo
mosaicml/examples=/src/examples`), which goes on the model's `python_path`; the packages (plus
a `requirements.txt` next to the handler's module, and a repository's own `pip_install`)
become the handler's own Python environment (see `python_env`).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from mosaic_serving.mosaicml_import.python_env import read_requirements_file


class SourceError(ValueError):
    """The handler's code or packages cannot be located: the message says what to pass."""


@dataclass
class HandlerSources:
    """What the import found for a custom handler class."""

    python_path: list[str] = field(default_factory=list)  # checkouts to put on sys.path
    module_file: Path | None = None  # the handler's module, when found locally
    requirements: list[str] = field(default_factory=list)
    requirement_origins: list[str] = field(default_factory=list)  # for the report
    notes: list[str] = field(default_factory=list)


def parse_git_repo_option(text: str) -> tuple[str, Path]:
    """`owner/name=DIR` (or `name=DIR`) from the command line."""
    name, separator, folder = text.partition("=")
    if not separator or not name or not folder:
        raise SourceError(f"--git-repo {text!r}: write it as OWNER/NAME=DIR, e.g. mosaicml/examples=./examples")
    path = Path(folder).expanduser().resolve()
    if not path.is_dir():
        raise SourceError(f"--git-repo {text!r}: {path} is not a directory")
    return name, path


def _integrations(integrations: Any) -> list[dict[str, Any]]:
    """The deployment's `integrations` list, checked."""
    items = integrations or []
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise SourceError("integrations must be a list of mappings, each with an integration_type")
    return items


def pip_packages(integrations: Any) -> list[str]:
    """The packages of every `pip_packages` integration, in order."""
    packages: list[str] = []
    for index, item in enumerate(_integrations(integrations)):
        if item.get("integration_type") != "pip_packages":
            continue
        listed = item.get("packages") or []
        if not isinstance(listed, list) or not all(isinstance(p, str) for p in listed):
            raise SourceError(f"integrations[{index}].packages must be a list of requirement strings")
        packages.extend(listed)
    return packages


def _checkout_for(repo: str, checkouts: Mapping[str, Path]) -> Path | None:
    return checkouts.get(repo) or checkouts.get(repo.rsplit("/", 1)[-1])


def _head_commit(folder: Path) -> str | None:
    try:
        result = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def git_checkouts(integrations: Any, checkouts: Mapping[str, Path], sources: HandlerSources) -> list[str]:
    """Map each `git_repo` integration to its checkout; the names left unmapped."""
    unmapped = []
    for index, item in enumerate(_integrations(integrations)):
        if item.get("integration_type") != "git_repo":
            continue
        repo = item.get("git_repo")
        if not isinstance(repo, str) or not repo:
            raise SourceError(f"integrations[{index}].git_repo must name a repository (owner/name)")
        folder = _checkout_for(repo, checkouts)
        if folder is None:
            unmapped.append(repo)
            continue
        sources.python_path.append(str(folder))
        wanted = item.get("git_commit")
        if wanted:
            head = _head_commit(folder)
            if head is None:
                sources.notes.append(f"git_repo {repo}: {folder} is not a git checkout; git_commit {wanted} not checked")
            elif not head.startswith(str(wanted)):
                sources.notes.append(f"git_repo {repo}: {folder} is at {head[:12]}, the deployment asks for {wanted}")
        if item.get("git_branch"):
            sources.notes.append(f"git_repo {repo}: git_branch {item['git_branch']} is not checked out; {folder} is used as it is")
        pip_install = item.get("pip_install")
        if pip_install:
            target = str(pip_install)
            if target.startswith("."):  # `.[all]`: the checkout itself, with extras
                target = str(folder) + target[1:]
            sources.requirements.append(target)
            sources.requirement_origins.append(f"git_repo {repo} pip_install")
    used = {name for name in checkouts if str(checkouts[name]) in sources.python_path}
    for name in sorted(set(checkouts) - used):
        sources.notes.append(f"--git-repo {name} is not an integration of this deployment; not used")
    return unmapped


def find_module(module: str, roots: Sequence[Path]) -> Path | None:
    """The file of dotted `module` under one of `roots` (names may hold '-', as MosaicML's do)."""
    parts = module.split(".")
    for root in roots:
        for candidate in (root.joinpath(*parts[:-1], parts[-1] + ".py"), root.joinpath(*parts, "__init__.py")):
            if candidate.is_file():
                return candidate
    return None


def handler_sources(integrations: Any, class_path: str, checkouts: Mapping[str, Path],
                    includes: Sequence[Path] = (), use_requirements_txt: bool = True) -> HandlerSources:
    """Checkouts, module file and requirements for the custom handler `class_path`.

    `integrations` is the deployment's list as the YAML has it (checked here).
    """
    sources = HandlerSources()
    unmapped = git_checkouts(integrations, checkouts, sources)
    packages = pip_packages(integrations)
    sources.requirements[:0] = packages
    sources.requirement_origins[:0] = ["integrations pip_packages"] * len(packages)

    module = class_path.rpartition(".")[0]
    roots = [Path(folder) for folder in sources.python_path]
    roots += [path.resolve().parent for path in includes]  # --include copies these next to model.py
    sources.module_file = find_module(module, roots)
    if sources.module_file is None:
        if unmapped:
            raise SourceError(
                f"model.model_handler {class_path}: module {module} is not found locally; the deployment "
                f"clones it from git_repo {', '.join(unmapped)}: pass --git-repo {unmapped[0]}=DIR (a local checkout)"
            )
        sources.notes.append(f"module {module} was not found in --include or --git-repo folders: "
                             "it must be importable where the server runs")
    elif use_requirements_txt:
        requirements_txt = sources.module_file.parent / "requirements.txt"
        if requirements_txt.is_file():
            listed = read_requirements_file(requirements_txt)
            sources.requirements.extend(listed)
            sources.requirement_origins.extend([str(requirements_txt)] * len(listed))
    for repo in unmapped:
        sources.notes.append(f"integrations git_repo {repo} is not mapped to a checkout (not needed for the "
                             f"handler's module); pass --git-repo {repo}=DIR if its code is imported")
    return sources
