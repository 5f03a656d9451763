"""Writing the imported model's folder: the template model copied, its config.pbtxt replaced.

The folder is staged next to the output and renamed into place, so a failed import never
leaves half a model in a repository that a server may be watching.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Sequence

from mosaic_serving.mosaicml_import.builtin_models import BUILTINS
from mosaic_serving.mosaicml_import.deployment import DeploymentImportError
from mosaic_serving.mosaicml_import.plan import CUSTOM_TEMPLATE, Plan
from mosaic_serving.mosaicml_import.render import render_config
from mosaic_serving.repository import default_model_repository


def find_templates(output: Path, templates: Path | None, template: str) -> Path:
    """The model repository holding the template model: given, beside the output, or ours."""
    candidates = ([templates] if templates else
                  [output.parent, default_model_repository(), Path.cwd() / "model_repository"])
    for candidate in candidates:
        if candidate is not None and (candidate / template / "config.pbtxt").is_file() \
                and (candidate / template).resolve() != output.resolve():
            return candidate
    raise DeploymentImportError(
        f"cannot find the {template} model to copy (looked in {', '.join(str(c) for c in candidates if c)}); "
        "pass --templates MODEL_REPOSITORY"
    )


def write_model(plan: Plan, output: Path, templates: Path, instance_kind: str, source: str,
                include: Sequence[Path] = (), force: bool = False) -> None:
    """Write the model folder `output` for `plan`, from the template model in `templates`."""
    template_dir = templates / plan.template
    built_in = {(repository / name).resolve() for repository in (templates, default_model_repository())
                for name in (*BUILTINS, CUSTOM_TEMPLATE)}
    if output.resolve() in built_in:
        raise DeploymentImportError(f"{output} is a built-in model; choose another --output")
    if output.exists() and not force:
        raise DeploymentImportError(f"{output} exists; pass --force to replace it")
    for path in include:
        if not path.exists():
            raise DeploymentImportError(f"--include {path} does not exist")
    config_text = render_config(plan, (template_dir / "config.pbtxt").read_text(), instance_kind, source)

    staging = output.with_name(f".{output.name}.importing")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "1").mkdir(parents=True)
    (staging / "config.pbtxt").write_text(config_text)
    shutil.copy2(template_dir / "1" / "model.py", staging / "1" / "model.py")
    for path in include:
        target = staging / "1" / path.name
        if path.is_dir():
            shutil.copytree(path, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, target)
    shutil.rmtree(output, ignore_errors=True)
    staging.rename(output)
