"""The plan: what model folder a deployment becomes, and what is reported about it.

A built-in handler becomes a copy of its built-in model, parameters renamed to ours; any other
class becomes a copy of the generic `custom_example` model with the class's own code, packages
and parameters. What has no equivalent here is a note, never silently dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from mosaic_serving.mosaicml_import.builtin_models import (
    BUILTINS,
    WEIGHTS_PARAMETER,
    Builtin,
    builtin_for,
    default_model_weights,
)
from mosaic_serving.mosaicml_import.deployment import Deployment, DeploymentImportError, Download, parse_deployment
from mosaic_serving.mosaicml_import.sources import SourceError, handler_sources
from mosaic_serving.triton.config import ADAPTER_PARAMETERS

CUSTOM_TEMPLATE = "custom_example"


@dataclass
class Plan:
    """What the import writes and reports."""

    name: str
    template: str  # the model folder copied: a built-in one or custom_example
    handler: str  # the class path served
    builtin: Builtin | None
    parameters: dict[str, Any]  # handler kwargs to write (values as Python objects)
    weights: str | None
    gpus: int
    replicas: int
    env: dict[str, str]
    batching: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    python_path: list[str] = field(default_factory=list)  # custom handlers: checkouts on sys.path
    requirements: list[str] = field(default_factory=list)  # custom handlers: their own packages
    requirement_origins: list[str] = field(default_factory=list)
    env_path: str | None = None  # the built environment (EXECUTION_ENV_PATH), once built


def plan_import(deployment: Mapping[str, Any] | Deployment, name: str | None = None, weights: str | None = None,
                git_repos: Mapping[str, Path] | None = None, includes: Sequence[Path] = (),
                use_requirements_txt: bool = True) -> Plan:
    """Decide what to write for `deployment` (a MosaicML deployment YAML, parsed or typed).

    `git_repos` maps `git_repo` integrations (owner/name or name) to local checkouts;
    `includes` are the files or packages copied next to model.py.
    """
    if not isinstance(deployment, Deployment):
        deployment = parse_deployment(deployment)
    name = name or deployment.name
    if not name:
        raise DeploymentImportError("the deployment has no `name`; pass --output DIR to name the model")
    notes: list[str] = []
    if deployment.default_model:
        builtin, download, model_weights = _default_model(deployment, weights)
        class_path, handler_parameters = builtin.handler, {}
    else:
        class_path, download, model_weights = deployment.model.class_path, deployment.model.download, None
        handler_parameters = dict(deployment.model.parameters)
        builtin = builtin_for(class_path)
    notes.extend(f"{key} is not used" for key in download.unused)
    if deployment.model:
        notes.extend(_model_notes(deployment))
    notes.extend(_unused_note(key, value) for key, value in deployment.ignored.items())
    if builtin is not None and deployment.integrations:
        notes.append(_unused_note("integrations", deployment.integrations))
    notes.extend(f"compute.{key} is not used: the Kubernetes scheduler or the GPU host decides"
                 for key in deployment.ignored_compute)

    if builtin is None:
        return _plan_custom(deployment, name, class_path, handler_parameters, weights, notes,
                            git_repos or {}, includes, use_requirements_txt)
    return _plan_builtin(deployment, name, builtin, handler_parameters, download, weights, model_weights, notes)


def _default_model(deployment: Deployment, weights: str | None) -> tuple[Builtin, Download, str | None]:
    """The built-in model, download source and hub id of `default_model`."""
    default_model = deployment.default_model
    download = default_model.checkpoint
    known = default_model_weights(default_model.model_type)
    if known is None and not (download.hf_path or weights):
        raise DeploymentImportError(
            f"default_model.model_type {default_model.model_type!r} is not one we know (mpt-*, llama2-*, "
            "instructor-*): name its weights with checkpoint_path.hf_path or --weights"
        )
    builtin, type_weights = known or (BUILTINS["mpt"], None)
    return builtin, download, type_weights


def _model_notes(deployment: Deployment) -> list[str]:
    spec = deployment.model
    notes = []
    if spec.downloader:
        notes.append(f"model.downloader {spec.downloader} is not run: "
                     "the handler loads its weights itself (hub ids download on first load)")
    notes.extend(f"model.{key} is not used" for key in spec.unused)
    return notes


def _plan_builtin(deployment: Deployment, name: str, builtin: Builtin, given: Mapping[str, Any], download: Download,
                  weights: str | None, model_weights: str | None, notes: list[str]) -> Plan:
    parameters = _builtin_parameters(builtin, given, notes)
    named = parameters.pop(WEIGHTS_PARAMETER, None)
    hf_path, stored = download.hf_path, download.stored
    chosen = weights or hf_path or named or model_weights
    if deployment.default_model and str(chosen).startswith("mosaicml/mpt") and "trust_remote_code" not in parameters:
        notes.append("MosaicML's MPT deployments loaded models with trust_remote_code=True; here it is false "
                     "(transformers' own classes, which load mosaicml/mpt-*): set MPT_TRUST_REMOTE_CODE=true "
                     "for a model that needs its own code")
    if hf_path and named and hf_path != named and not weights:
        notes.append(f"weights: download_parameters.hf_path {hf_path} is used, not {named}")
    if stored and not (weights or hf_path):
        if named:
            notes.append(f"weights are not fetched from {stored}: put the checkpoint at {named}")
        else:
            raise DeploymentImportError(
                f"{stored}: object-store downloads are not supported; download the checkpoint and pass "
                "--weights DIR (a directory the server can read) or set download_parameters.hf_path"
            )
    gpus = deployment.gpus
    if gpus > 1:
        notes.append(f"{gpus} GPUs: one instance of the model on each GPU, each holding the whole model "
                     "(data parallel; there is no tensor parallelism here)")
    plan = Plan(name, builtin.model, builtin.handler, builtin, parameters, chosen, gpus, deployment.replicas,
                deployment.env, {}, notes)
    _apply_batching(plan, deployment.batching)
    return plan


def _plan_custom(deployment: Deployment, name: str, class_path: str, parameters: dict[str, Any],
                 weights: str | None, notes: list[str], git_repos: Mapping[str, Path], includes: Sequence[Path],
                 use_requirements_txt: bool) -> Plan:
    """A handler class served as it is, through the generic custom model."""
    reserved = sorted(set(parameters) & ADAPTER_PARAMETERS)
    if reserved:
        raise DeploymentImportError(f"model_parameters.{reserved[0]} is a parameter of the serving adapter "
                                    "itself; rename it in the handler class")
    try:
        sources = handler_sources(deployment.integrations, class_path, git_repos, includes, use_requirements_txt)
    except SourceError as error:
        raise DeploymentImportError(str(error)) from None
    notes.extend(sources.notes)
    _resolve_downloads(parameters, deployment.model.download, weights, notes)
    if deployment.batching:
        notes.append("batching is not applied to custom handlers: each request is its own predict call "
                     "(requests Triton receives together are still served concurrently)")
    return Plan(name, CUSTOM_TEMPLATE, class_path, None, parameters, None, deployment.gpus, deployment.replicas,
                deployment.env, {}, notes, python_path=sources.python_path, requirements=sources.requirements,
                requirement_origins=sources.requirement_origins)


def _resolve_downloads(parameters: dict[str, Any], download: Download, weights: str | None,
                       notes: list[str]) -> None:
    """Point the class's parameters at the weights as MosaicML's downloader left them.

    A parameter whose value names the download source gets `--weights` (a local copy) when
    given; a hub id is otherwise kept (the class fetches it); an object-store path needs
    `--weights`, since nothing downloads it here.
    """
    sources = [source for source in (download.hf_path, download.stored_path) if source]
    referring = [key for key, value in parameters.items() if isinstance(value, str) and value in sources]
    if weights:
        for key in referring:
            notes.append(f"model_parameters.{key}: {parameters[key]} is replaced by --weights {weights}")
            parameters[key] = weights
        if not referring:
            notes.append(f"--weights {weights} is not given to the class: none of its model_parameters names "
                         f"{' or '.join(sources) or 'a download source'}")
        return
    if download.stored_path:
        raise DeploymentImportError(
            f"download_parameters {download.stored}: object-store downloads are not run here; download the "
            "checkpoint and pass --weights DIR (it replaces the model_parameters that name that path)"
        )
    if download.hf_path and not referring:
        notes.append(f"download_parameters.hf_path {download.hf_path} is not named by any model_parameters: "
                     "the class loads what its parameters say")


def _unused_note(key: str, value: Any) -> str:
    if key == "integrations":
        packages = [package for item in value if isinstance(item, dict)
                    for package in item.get("packages", []) or []]
        hint = f" (pip packages to add to the image: {' '.join(packages)})" if packages else ""
        return f"integrations are not run for a built-in model, which runs in the server's environment{hint}"
    if key == "image":
        return f"image {value} is not used: the server runs the image of docker/Dockerfile"
    if key == "command":
        shown = "; ".join(line.strip() for line in str(value).strip().splitlines())
        return (f"command is not run ({shown}): the server starts Triton; code that it put on PYTHONPATH "
                "comes from --git-repo / --include, packages from the handler's environment")
    return f"{key} is not used"


def _builtin_parameters(builtin: Builtin, given: Mapping[str, Any], notes: list[str]) -> dict[str, Any]:
    """MosaicML's `model_parameters` in our names; one the handler does not take is an error."""
    parameters: dict[str, Any] = {}
    for key, value in given.items():
        if key in builtin.ignored:
            notes.append(f"model_parameters.{key} is dropped: {builtin.ignored[key]}")
            continue
        ours = builtin.renames.get(key, key)
        if ours not in builtin.parameters:
            accepted = sorted(builtin.parameters | set(builtin.renames))
            raise DeploymentImportError(
                f"model_parameters.{key} is not a parameter of {builtin.handler} (accepted: {', '.join(accepted)})"
            )
        if ours in parameters and parameters[ours] != value:
            raise DeploymentImportError(f"model_parameters name {ours} twice, with different values")
        parameters[ours] = value
    return parameters


def _apply_batching(plan: Plan, batching: Mapping[str, Any]) -> None:
    """MosaicML's `batching` on a built-in model: Triton's dynamic batching, or mpt's own."""
    if not batching:
        return
    size = batching.get("max_batch_size")
    timeout_ms = batching.get("max_timeout_ms")
    if plan.template == "mpt":
        if size is not None:
            plan.parameters.setdefault("max_batch_size", size)
        if timeout_ms is not None:
            plan.notes.append("batching.max_timeout_ms is not used: mpt batches continuously, with no delay")
    else:
        plan.batching = {key: value for key, value in (("max_batch_size", size), ("max_timeout_ms", timeout_ms))
                         if value is not None}
    for key in sorted(set(batching) - {"max_batch_size", "max_timeout_ms"}):
        plan.notes.append(f"batching.{key} is not used")
