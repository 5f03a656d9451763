"""A MosaicML deployment YAML read into typed fields, every value checked where it is read.

Nothing here decides what to serve (see `plan`); keys with no equivalent on this server are
kept (`ignored`, `unused`) so that the plan can report them rather than drop them silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

# `download_parameters` / `checkpoint_path` keys that name weights we cannot fetch here.
OBJECT_STORE_KEYS = ("s3_path", "gcp_path", "gcs_path", "gpc_path", "oci_path", "azure_path")
# Top-level and `compute` keys that have no equivalent here (reported when set).
IGNORED_KEYS = ("image", "command", "cluster", "gpu_type", "rate_limit", "metadata")
IGNORED_COMPUTE_KEYS = ("gpu_type", "instance", "cluster", "nodes", "cpus")
_MODEL_KEYS = ("model_handler", "model_parameters", "download_parameters", "downloader")


class DeploymentImportError(ValueError):
    """The deployment YAML cannot be turned into a model: the message says why and what to do."""


@dataclass(frozen=True)
class Download:
    """Where MosaicML's downloader fetched the weights from (`download_parameters`, `checkpoint_path`)."""

    hf_path: str | None = None
    stored: str | None = None  # an object-store location, as "s3_path: s3://..."
    unused: tuple[str, ...] = ()  # other keys, reported

    @property
    def stored_path(self) -> str | None:
        return self.stored.split(": ", 1)[1] if self.stored else None


@dataclass(frozen=True)
class HandlerSpec:
    """`model:`: a handler class and its constructor kwargs."""

    class_path: str
    parameters: dict[str, Any]
    download: Download
    downloader: Any = None
    unused: tuple[str, ...] = ()  # other `model.` keys, reported


@dataclass(frozen=True)
class DefaultModel:
    """`default_model:`: one of MosaicML's stock models by type."""

    model_type: str
    checkpoint: Download


@dataclass(frozen=True)
class Deployment:
    """What a deployment YAML asks for; exactly one of `model` and `default_model` is set."""

    name: str | None
    gpus: int
    replicas: int
    env: dict[str, str]
    batching: dict[str, Any]
    model: HandlerSpec | None
    default_model: DefaultModel | None
    integrations: Any = None  # checked by `sources`, which reads them for custom handlers
    ignored: dict[str, Any] = field(default_factory=dict)  # IGNORED_KEYS that are set
    ignored_compute: tuple[str, ...] = ()  # IGNORED_COMPUTE_KEYS that are set


def load_deployment(path: str | Path) -> dict[str, Any]:
    """The YAML file as a mapping (see `parse_deployment` for its fields)."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as error:
        raise DeploymentImportError(f"{path} is not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise DeploymentImportError(f"{path}: a deployment YAML is a mapping, got {type(data).__name__}")
    return data


def parse_deployment(data: Mapping[str, Any]) -> Deployment:
    """The typed deployment; a value of the wrong type is an error naming its key."""
    compute = _mapping(data, "compute", "")
    model = _mapping(data, "model", "")
    default_model = _mapping(data, "default_model", "")
    if model and default_model:
        raise DeploymentImportError("the deployment has both `model` and `default_model`; keep one")
    if not model and not default_model:
        raise DeploymentImportError("the deployment has neither `model` (a handler) nor `default_model`")
    name = data.get("name")
    return Deployment(
        name=name if isinstance(name, str) and name else None,
        gpus=_count(compute, "gpus", "compute.", default=_count(data, "gpu_num", "", default=0)),
        replicas=_count(data, "replicas", "", default=1),
        env={str(k): str(v) for k, v in _mapping(data, "env_variables", "").items()},
        batching=_mapping(data, "batching", ""),
        model=_handler_spec(model) if model else None,
        default_model=_default_model(default_model) if default_model else None,
        integrations=data.get("integrations"),
        ignored={key: data[key] for key in IGNORED_KEYS if data.get(key)},
        ignored_compute=tuple(key for key in IGNORED_COMPUTE_KEYS if compute.get(key)),
    )


def _handler_spec(model: Mapping[str, Any]) -> HandlerSpec:
    class_path = model.get("model_handler")
    if not class_path:
        raise DeploymentImportError(
            "model.model_handler is missing: MosaicML's default handler has no equivalent here; "
            "name a handler class (e.g. mosaic_serving.handlers.mpt.MPTModelHandler)"
        )
    if not isinstance(class_path, str) or "." not in class_path:
        raise DeploymentImportError(f"model.model_handler must be a 'package.module.Class' path, got {class_path!r}")
    return HandlerSpec(
        class_path=class_path,
        parameters=_mapping(model, "model_parameters", "model."),
        download=_download(_mapping(model, "download_parameters", "model."), "model.download_parameters."),
        downloader=model.get("downloader"),
        unused=tuple(sorted(set(model) - set(_MODEL_KEYS))),
    )


def _default_model(default_model: Mapping[str, Any]) -> DefaultModel:
    model_type = default_model.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise DeploymentImportError("default_model.model_type must name a model, e.g. mpt-7b-instruct")
    checkpoint = _mapping(default_model, "checkpoint_path", "default_model.")
    return DefaultModel(model_type, _download(checkpoint, "default_model.checkpoint_path."))


def _download(download: Mapping[str, Any], where: str) -> Download:
    hf_path = download.get("hf_path")
    if hf_path is not None and not isinstance(hf_path, str):
        raise DeploymentImportError(f"{where}hf_path must be a string, got {hf_path!r}")
    stored = next((f"{key}: {download[key]}" for key in OBJECT_STORE_KEYS if download.get(key)), None)
    unused = tuple(f"{where}{key}" for key in sorted(set(download) - {"hf_path", *OBJECT_STORE_KEYS}))
    return Download(hf_path, stored, unused)


def _mapping(data: Mapping[str, Any], key: str, where: str) -> dict[str, Any]:
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise DeploymentImportError(f"{where}{key} must be a mapping, got {value!r}")
    return dict(value)


def _count(data: Mapping[str, Any], key: str, where: str, default: int) -> int:
    value = data.get(key)
    if value is None:
        return default
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise DeploymentImportError(f"{where}{key} must be a whole number, got {value!r}") from None
    if number < 0 or str(number) != str(value).strip():
        raise DeploymentImportError(f"{where}{key} must be a whole number >= 0, got {value!r}")
    return number
