"""Per-model Python environments for Triton's Python backend (`EXECUTION_ENV_PATH`).

A handler that needs its own package versions (MosaicML's instructor deployment pins
`sentence-transformers==2.2.2`, which needs transformers 4) cannot share the server's
environment. Triton's Python backend runs a model's stub in another environment when the
model's config names it:

    parameters { key: "EXECUTION_ENV_PATH" value: { string_value: "/path/to/env" } }

Triton 2.51 accepts either a packed archive (`.tar.gz`, e.g. from conda-pack; extracted
under /tmp at every load) or an unpacked directory (used in place). Either way it runs
`source <env>/bin/activate` and then the stub with `<env>/lib` first on LD_LIBRARY_PATH; the
stub embeds the `python3` it finds first on PATH, which is now the environment's.

We build an unpacked virtual environment, because a venv is not relocatable (its `activate`
names its own path), with:
- the Python of this process, so the same minor version as the stub the server runs
  (the stub is compiled against one libpython);
- `numpy<2`: Triton 2.51's stub breaks on BYTES tensors with numpy 2;
- the handler's requirements;
- a copy of this package (`mosaic_serving`, pure Python), so the shared adapter imports
  there; only numpy is needed for that, none of torch, transformers or diffusers.

Environments are built once and cached by the hash of their requirement list and Python
version (`~/.cache/mosaic-serving/python-envs/<hash>`, or `MOSAIC_SERVING_ENV_CACHE`). The
adapter copy is refreshed whenever this package changes, without rebuilding.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterable, Sequence

STUB_REQUIREMENTS = ("numpy<2",)  # what Triton 2.51's Python backend stub needs
COMPLETE_MARKER = ".mosaic-env.json"
PACKAGE_DIR = Path(__file__).resolve().parents[1]  # mosaic_serving


class EnvBuildError(RuntimeError):
    """The environment could not be built: the message says which requirement and why."""


def default_cache_dir() -> Path:
    configured = os.environ.get("MOSAIC_SERVING_ENV_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "mosaic-serving" / "python-envs"


def python_version(python: str | os.PathLike[str] = sys.executable) -> str:
    """`major.minor` of an interpreter (this one unless told)."""
    if Path(python).resolve() == Path(sys.executable).resolve():
        return f"{sys.version_info.major}.{sys.version_info.minor}"
    out = subprocess.run([str(python), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


def read_requirements_file(path: Path) -> list[str]:
    """The requirement lines of a requirements.txt (comments and blank lines left out)."""
    lines = []
    for line in path.read_text().splitlines():
        line = line.split(" #", 1)[0].strip()
        if line and not line.startswith("#"):
            lines.append(line)
    return lines


def env_requirements(requirements: Iterable[str]) -> list[str]:
    """The handler's requirements, then what the stub needs, without duplicates, in order."""
    seen: dict[str, None] = {}
    for requirement in [*requirements, *STUB_REQUIREMENTS]:
        seen.setdefault(requirement.strip(), None)
    return [requirement for requirement in seen if requirement]


def env_key(requirements: Sequence[str], version: str) -> str:
    """The cache key: the hash of the requirement list (order kept: pip reads it in order)."""
    text = json.dumps({"python": version, "requirements": list(requirements)})
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _package_digest() -> str:
    digest = hashlib.sha256()
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        digest.update(str(path.relative_to(PACKAGE_DIR)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def site_packages(env: Path) -> Path:
    [found] = list((env / "lib").glob("python3.*/site-packages"))
    return found


def install_adapter(env: Path) -> None:
    """Copy this package into the environment, unless the copy there is already current."""
    target = site_packages(env) / "mosaic_serving"
    stamp = target / ".source-digest"
    digest = _package_digest()
    if stamp.is_file() and stamp.read_text() == digest:
        return
    staging = target.with_name(f".mosaic_serving.{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    # The installed package's copy of the model repository is data, not adapter code.
    shutil.copytree(PACKAGE_DIR, staging, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "model_repository"))
    (staging / ".source-digest").write_text(digest)
    old = target.with_name(f".mosaic_serving.old.{os.getpid()}")
    if target.exists():
        target.rename(old)
    staging.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def _run(command: list[str], what: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-25:])
        raise EnvBuildError(f"{what} failed (exit {result.returncode}):\n{tail}")


def _create(env: Path, requirements: list[str], python: str) -> None:
    _run([python, "-m", "venv", "--clear", str(env)], f"creating the virtual environment {env}")
    requirements_file = env / "requirements.txt"
    requirements_file.write_text("\n".join(requirements) + "\n")
    _run([str(env / "bin" / "python"), "-m", "pip", "install", "--no-input", "--disable-pip-version-check",
          "-r", str(requirements_file)],
         f"installing the requirements into {env} ({', '.join(requirements)})")
    _check(env)


def _check(env: Path) -> None:
    """The environment imports what the stub needs, with numpy < 2."""
    probe = "import numpy, sys; sys.exit(0 if int(numpy.__version__.split('.')[0]) < 2 else 3)"
    result = subprocess.run([str(env / "bin" / "python"), "-c", probe], capture_output=True, text=True)
    if result.returncode == 3:
        raise EnvBuildError(f"{env} has numpy 2, which Triton 2.51's stub cannot use: pin numpy<2")
    if result.returncode != 0:
        raise EnvBuildError(f"{env} cannot import numpy: {result.stderr.strip()}")


def build_env(
    requirements: Iterable[str],
    cache_dir: Path | None = None,
    python: str = sys.executable,
    log: Callable[[str], None] = lambda message: None,
) -> Path:
    """The environment for `requirements` (built now, or found in the cache): its directory.

    Built in place under a lock (a venv cannot move); a directory without the completion
    marker is a failed or interrupted build and is rebuilt.
    """
    requirements = env_requirements(requirements)
    version = python_version(python)
    cache_dir = (cache_dir or default_cache_dir()).resolve()
    cache_dir.mkdir(parents=True, exist_ok=True)
    env = cache_dir / env_key(requirements, version)
    with open(cache_dir / f"{env.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (env / COMPLETE_MARKER).is_file():
            log(f"building Python {version} environment {env} ({', '.join(requirements)})")
            try:
                _create(env, requirements, python)
            except BaseException:
                shutil.rmtree(env, ignore_errors=True)
                raise
            (env / COMPLETE_MARKER).write_text(json.dumps({"python": version, "requirements": requirements}))
        else:
            log(f"using the cached environment {env}")
        install_adapter(env)
    return env

