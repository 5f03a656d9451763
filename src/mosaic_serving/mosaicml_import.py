"""Turn a MosaicML inference deployment YAML into a Triton model repository entry.

    python -m mosaic_serving.mosaicml_import deployment.yaml --output model_repository/NAME

A MosaicML deployment names a handler class and its constructor kwargs:

    name: mpt-7b-custom
    compute: {gpus: 1}              # or the older `gpu_num: 1`
    replicas: 2
    model:
      model_handler: examples.inference-deployments.mpt.mpt_handler.MPTModelHandler
      model_parameters: {model_name: mosaicml/mpt-7b}
      download_parameters: {hf_path: mosaicml/mpt-7b}

(or `default_model: {model_type: mpt-7b-instruct, checkpoint_path: {hf_path: ...}}`).

- `model.model_handler` is served as it is: the class it names (MosaicML's own
  `examples.inference-deployments...` ones included) runs in a copy of the generic
  `custom_example` model, with `model_parameters` as its constructor kwargs (types kept).
  Its code comes from `--include` (copied next to model.py) or from a `git_repo` integration
  mapped to a local checkout (`--git-repo mosaicml/examples=DIR`, put on the model's
  `python_path`). Its packages (`pip_packages` integrations, a `requirements.txt` next to its
  module, a repository's `pip_install`) become its own Python environment (EXECUTION_ENV_PATH,
  see `python_env`), built once and cached.
- `download_parameters`: a model parameter naming the same `hf_path` / `s3_path` / `gcp_path`
  gets `--weights` (a local copy) when given; a hub id is otherwise kept (the class downloads
  it on first load, as MosaicML's downloader had filled the hub cache before).
- Our own classes (`mosaic_serving.handlers...`) and `default_model.model_type` (mpt-7b,
  mpt-30b-chat, llama2-*, instructor-*) become a copy of a built-in model, parameters renamed
  to ours (`model_name` is `model_name_or_path`).
- `gpu_num` / `compute.gpus` N: KIND_AUTO instances by default (one on each GPU the server
  sees, the CPU where there is none, so the entry also loads on a CPU machine);
  `--instance-kind gpu` pins one instance on each of GPUs 0..N-1 (each holds a whole copy of
  the model; there is no tensor parallelism). `replicas` is for the Kubernetes Deployment:
  printed, and written with `--values-file` as values for deploy/helm.
- What has no equivalent here (image, command, downloader, ...) is reported, not silently
  dropped; parameters that a built-in handler does not take are an error.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from mosaic_serving import python_env
from mosaic_serving.mosaicml_sources import SourceError, handler_sources, parse_git_repo_option
from mosaic_serving.triton.config import ADAPTER_PARAMETERS, EXECUTION_ENV_PARAMETER, parse_value

WEIGHTS_PARAMETER = "model_name_or_path"
SOURCE_REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"
CUSTOM_TEMPLATE = "custom_example"


class DeploymentImportError(ValueError):
    """The deployment YAML cannot be turned into a model: the message says why and what to do."""


@dataclass(frozen=True)
class Builtin:
    """One of our built-in models and how MosaicML's parameters map onto its handler."""

    model: str  # its folder in model_repository/
    handler: str
    class_names: frozenset[str]
    parameters: frozenset[str]  # the handler's constructor kwargs (besides `device`)
    renames: Mapping[str, str] = field(default_factory=dict)  # MosaicML name -> ours
    ignored: Mapping[str, str] = field(default_factory=dict)  # MosaicML name -> why


_FT_PARAMETER = "a FasterTransformer setting; this server runs transformers"
BUILTINS = {
    "mpt": Builtin(
        model="mpt",
        handler="mosaic_serving.handlers.mpt.MPTModelHandler",
        class_names=frozenset({"MPTModelHandler", "MPTFTModelHandler"}),
        parameters=frozenset({WEIGHTS_PARAMETER, "dtype", "trust_remote_code", "max_batch_size",
                              "max_input_tokens", "max_new_tokens_limit", "max_queue_size"}),
        renames={"model_name": WEIGHTS_PARAMETER, "torch_dtype": "dtype"},
        ignored={
            "attn_impl": "transformers' built-in MPT attention is used",
            "clean_up_tokenization_spaces": "decoding keeps the tokenizer's own setting",
            "ft_lib_path": _FT_PARAMETER,
            "gpus": _FT_PARAMETER,
            "tensor_para_size": _FT_PARAMETER,
            "pipeline_para_size": _FT_PARAMETER,
            "int8_mode": _FT_PARAMETER,
        },
    ),
    "instructor": Builtin(
        model="instructor",
        handler="mosaic_serving.handlers.instructor.HFInstructorHandler",
        class_names=frozenset({"HFInstructorHandler"}),
        parameters=frozenset({WEIGHTS_PARAMETER, "dtype", "max_seq_length", "max_batch_size"}),
        renames={"model_name": WEIGHTS_PARAMETER, "torch_dtype": "dtype"},
    ),
    "diffusion": Builtin(
        model="diffusion",
        handler="mosaic_serving.handlers.diffusion.StableDiffusionHandler",
        class_names=frozenset({"StableDiffusionHandler"}),
        parameters=frozenset({WEIGHTS_PARAMETER, "dtype", "max_pixels", "max_images_per_request",
                              "max_inference_steps", "max_images_per_batch"}),
        renames={"model_name": WEIGHTS_PARAMETER, "torch_dtype": "dtype"},
    ),
}

# Class paths from our package are built-in handlers when the class name matches; any other
# class (MosaicML's `examples.inference-deployments.mpt.mpt_handler...` too) is served as it is.
_BUILTIN_PACKAGES = ("mosaic_serving.",)
# `download_parameters` / `checkpoint_path` keys that name weights we cannot fetch here.
_OBJECT_STORE_KEYS = ("s3_path", "gcp_path", "gcs_path", "gpc_path", "oci_path", "azure_path")


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


# ---- reading the deployment ----------------------------------------------------------------


def load_deployment(path: str | Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as error:
        raise DeploymentImportError(f"{path} is not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise DeploymentImportError(f"{path}: a deployment YAML is a mapping, got {type(data).__name__}")
    return data


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


def builtin_for(class_path: str) -> Builtin | None:
    """The built-in model serving `class_path`, or None for a custom handler."""
    module, _, class_name = class_path.rpartition(".")
    if not module.startswith(_BUILTIN_PACKAGES) and module != "mosaic_serving":
        return None
    for builtin in BUILTINS.values():
        if class_name in builtin.class_names:
            return builtin
    return None


def default_model_weights(model_type: str) -> tuple[Builtin, str] | None:
    """MosaicML's `default_model.model_type` as one of our models and its hub id."""
    if model_type.startswith("mpt-"):
        return BUILTINS["mpt"], f"mosaicml/{model_type}"
    match = re.fullmatch(r"llama2-(\d+b)(-chat)?", model_type)
    if match:
        return BUILTINS["mpt"], f"meta-llama/Llama-2-{match.group(1)}{match.group(2) or ''}-hf"
    if model_type.startswith("instructor-"):
        return BUILTINS["instructor"], f"hkunlp/{model_type}"
    return None


def _download_source(download: Mapping[str, Any], where: str, notes: list[str]) -> tuple[str | None, str | None]:
    """(hf_path, object-store path) named by download_parameters / checkpoint_path."""
    hf_path = download.get("hf_path")
    if hf_path is not None and not isinstance(hf_path, str):
        raise DeploymentImportError(f"{where}hf_path must be a string, got {hf_path!r}")
    stored = next((f"{key}: {download[key]}" for key in _OBJECT_STORE_KEYS if download.get(key)), None)
    for key in sorted(set(download) - {"hf_path", *_OBJECT_STORE_KEYS}):
        notes.append(f"{where}{key} is not used")
    return hf_path, stored


def plan_import(deployment: Mapping[str, Any], name: str | None = None, weights: str | None = None,
                git_repos: Mapping[str, Path] | None = None, includes: Sequence[Path] = (),
                use_requirements_txt: bool = True) -> Plan:
    """Decide what to write for `deployment` (a parsed MosaicML deployment YAML).

    `git_repos` maps `git_repo` integrations (owner/name or name) to local checkouts;
    `includes` are the files or packages copied next to model.py.
    """
    notes: list[str] = []
    name = name or deployment.get("name")
    if not name or not isinstance(name, str):
        raise DeploymentImportError("the deployment has no `name`; pass --output DIR to name the model")

    compute = _mapping(deployment, "compute", "")
    gpus = _count(compute, "gpus", "compute.", default=_count(deployment, "gpu_num", "", default=0))
    replicas = _count(deployment, "replicas", "", default=1)
    env = {str(k): str(v) for k, v in _mapping(deployment, "env_variables", "").items()}
    batching = _mapping(deployment, "batching", "")

    model = _mapping(deployment, "model", "")
    default_model = _mapping(deployment, "default_model", "")
    if model and default_model:
        raise DeploymentImportError("the deployment has both `model` and `default_model`; keep one")
    if not model and not default_model:
        raise DeploymentImportError("the deployment has neither `model` (a handler) nor `default_model`")

    if default_model:
        model_type = default_model.get("model_type")
        if not isinstance(model_type, str) or not model_type:
            raise DeploymentImportError("default_model.model_type must name a model, e.g. mpt-7b-instruct")
        hf_path, stored = _download_source(_mapping(default_model, "checkpoint_path", "default_model."),
                                           "default_model.checkpoint_path.", notes)
        known = default_model_weights(model_type)
        if known is None and not (hf_path or weights):
            raise DeploymentImportError(
                f"default_model.model_type {model_type!r} is not one we know (mpt-*, llama2-*, instructor-*): "
                "name its weights with checkpoint_path.hf_path or --weights"
            )
        builtin, type_weights = known or (BUILTINS["mpt"], None)
        handler_parameters: dict[str, Any] = {}
        class_path = builtin.handler
        model_weights = type_weights
    else:
        class_path = model.get("model_handler")
        if not class_path:
            raise DeploymentImportError(
                "model.model_handler is missing: MosaicML's default handler has no equivalent here; "
                "name a handler class (e.g. mosaic_serving.handlers.mpt.MPTModelHandler)"
            )
        if not isinstance(class_path, str) or "." not in class_path:
            raise DeploymentImportError(f"model.model_handler must be a 'package.module.Class' path, got {class_path!r}")
        builtin = builtin_for(class_path)
        handler_parameters = _mapping(model, "model_parameters", "model.")
        hf_path, stored = _download_source(_mapping(model, "download_parameters", "model."),
                                           "model.download_parameters.", notes)
        if model.get("downloader"):
            notes.append(f"model.downloader {model['downloader']} is not run: "
                         "the handler loads its weights itself (hub ids download on first load)")
        for key in sorted(set(model) - {"model_handler", "model_parameters", "download_parameters", "downloader"}):
            notes.append(f"model.{key} is not used")
        model_weights = None

    for key in ("image", "command", "cluster", "gpu_type", "rate_limit", "metadata"):
        if deployment.get(key):
            notes.append(_unused_note(key, deployment[key]))
    if builtin is not None and deployment.get("integrations"):
        notes.append(_unused_note("integrations", deployment["integrations"]))
    for key in ("gpu_type", "instance", "cluster", "nodes", "cpus"):
        if compute.get(key):
            notes.append(f"compute.{key} is not used: the Kubernetes scheduler or the GPU host decides")

    if builtin is None:
        return _plan_custom(deployment, name, class_path, handler_parameters, (hf_path, stored), weights,
                            gpus, replicas, env, batching, notes, git_repos or {}, includes, use_requirements_txt)

    parameters = _builtin_parameters(builtin, handler_parameters, notes)
    named = parameters.pop(WEIGHTS_PARAMETER, None)
    chosen = weights or hf_path or named or model_weights
    if default_model and str(chosen).startswith("mosaicml/mpt") and "trust_remote_code" not in parameters:
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
    if gpus > 1:
        notes.append(f"{gpus} GPUs: one instance of the model on each GPU, each holding the whole model "
                     "(data parallel; there is no tensor parallelism here)")
    plan = Plan(name, builtin.model, builtin.handler, builtin, parameters, chosen, gpus, replicas, env, {}, notes)
    _apply_batching(plan, batching)
    return plan


def _plan_custom(deployment: Mapping[str, Any], name: str, class_path: str, parameters: dict[str, Any],
                 download: tuple[str | None, str | None], weights: str | None, gpus: int, replicas: int,
                 env: dict[str, str], batching: Mapping[str, Any], notes: list[str],
                 git_repos: Mapping[str, Path], includes: Sequence[Path], use_requirements_txt: bool) -> Plan:
    """A handler class served as it is, through the generic custom model."""
    reserved = sorted(set(parameters) & ADAPTER_PARAMETERS)
    if reserved:
        raise DeploymentImportError(f"model_parameters.{reserved[0]} is a parameter of the serving adapter "
                                    "itself; rename it in the handler class")
    try:
        sources = handler_sources(deployment, class_path, git_repos, includes, use_requirements_txt)
    except SourceError as error:
        raise DeploymentImportError(str(error)) from None
    notes.extend(sources.notes)
    _resolve_downloads(parameters, download, weights, notes)
    if batching:
        notes.append("batching is not applied to custom handlers: each request is its own predict call "
                     "(requests Triton receives together are still served concurrently)")
    plan = Plan(name, CUSTOM_TEMPLATE, class_path, None, parameters, None, gpus, replicas, env, {}, notes,
                python_path=sources.python_path, requirements=sources.requirements,
                requirement_origins=sources.requirement_origins)
    return plan


def _resolve_downloads(parameters: dict[str, Any], download: tuple[str | None, str | None], weights: str | None,
                       notes: list[str]) -> None:
    """Point the class's parameters at the weights as MosaicML's downloader left them.

    A parameter whose value names the download source gets `--weights` (a local copy) when
    given; a hub id is otherwise kept (the class fetches it); an object-store path needs
    `--weights`, since nothing downloads it here.
    """
    hf_path, stored = download
    stored_path = stored.split(": ", 1)[1] if stored else None
    sources = [source for source in (hf_path, stored_path) if source]
    referring = [key for key, value in parameters.items() if isinstance(value, str) and value in sources]
    if weights:
        for key in referring:
            notes.append(f"model_parameters.{key}: {parameters[key]} is replaced by --weights {weights}")
            parameters[key] = weights
        if not referring:
            notes.append(f"--weights {weights} is not given to the class: none of its model_parameters names "
                         f"{' or '.join(sources) or 'a download source'}")
        return
    if stored_path:
        raise DeploymentImportError(
            f"download_parameters {stored}: object-store downloads are not run here; download the checkpoint "
            "and pass --weights DIR (it replaces the model_parameters that name that path)"
        )
    if hf_path and not referring:
        notes.append(f"download_parameters.hf_path {hf_path} is not named by any model_parameters: "
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


# ---- writing the model ---------------------------------------------------------------------


def parameter_text(value: Any) -> str:
    """A parameter value as config.pbtxt text that `config.parse_value` reads back unchanged.

    Strings stay as they are unless they would read back as something else ("8", "true"):
    those, and every other value, are written as JSON.
    """
    if isinstance(value, str) and parse_value(value) == value:
        return value
    text = json.dumps(value)
    if parse_value(text) != value:
        raise DeploymentImportError(f"parameter value {value!r} cannot be written to config.pbtxt")
    return text


def _model_config_module():
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError as error:  # pragma: no cover - tritonclient is in the [serve] extra
        raise DeploymentImportError(
            f"reading config.pbtxt needs tritonclient[grpc] ({error}): pip install 'mosaic-serving[serve]'"
        ) from None
    return text_format, model_config_pb2


def _leading_comments(text: str) -> list[str]:
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line)
    return lines


def render_config(plan: Plan, template_text: str, instance_kind: str, source: str) -> str:
    """The new config.pbtxt: the template's, with this deployment's parameters and instances."""
    text_format, model_config_pb2 = _model_config_module()
    config = text_format.Parse(template_text, model_config_pb2.ModelConfig())
    if plan.builtin is None:
        for key in list(config.parameters):
            del config.parameters[key]
        config.parameters["handler"].string_value = plan.handler
        if plan.python_path:
            config.parameters["python_path"].string_value = json.dumps(plan.python_path)
    if plan.env_path:
        config.parameters[EXECUTION_ENV_PARAMETER].string_value = plan.env_path
    if plan.weights is not None:
        config.parameters[WEIGHTS_PARAMETER].string_value = plan.weights
    for key, value in plan.parameters.items():
        config.parameters[key].string_value = parameter_text(value)

    del config.instance_group[:]
    group = config.instance_group.add(count=1)
    if instance_kind == "gpu":
        group.kind = model_config_pb2.ModelInstanceGroup.KIND_GPU
        group.gpus.extend(range(max(plan.gpus, 1)))
    elif instance_kind == "cpu":
        group.kind = model_config_pb2.ModelInstanceGroup.KIND_CPU
    else:
        group.kind = model_config_pb2.ModelInstanceGroup.KIND_AUTO

    if plan.batching:
        if config.max_batch_size <= 0:  # pragma: no cover - built-in models with batching have it
            raise DeploymentImportError(f"{plan.template} does not batch requests in Triton")
        if "max_batch_size" in plan.batching:
            config.max_batch_size = int(plan.batching["max_batch_size"])
        if "max_timeout_ms" in plan.batching:
            delay = int(float(plan.batching["max_timeout_ms"]) * 1000)
            config.dynamic_batching.max_queue_delay_microseconds = delay

    header = [f"# Imported from {source} by `python -m mosaic_serving.mosaicml_import`;",
              f"# handler {plan.handler}, based on model_repository/{plan.template}."]
    comments = _leading_comments(template_text)
    return "\n".join([*header, *(["#"] + comments if comments else []), text_format.MessageToString(config)])


def find_templates(output: Path, templates: Path | None, template: str) -> Path:
    """The model repository holding the template model: given, beside the output, or ours."""
    candidates = [templates] if templates else [output.parent, SOURCE_REPOSITORY, Path.cwd() / "model_repository"]
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
    template_dir = templates / plan.template
    built_in = {(repository / name).resolve() for repository in (templates, SOURCE_REPOSITORY)
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


def helm_values(plan: Plan) -> dict[str, Any]:
    """Values for deploy/helm/mosaic-serving that match the deployment's scale-out."""
    values: dict[str, Any] = {"replicaCount": plan.replicas, "gpusPerReplica": plan.gpus}
    if plan.env:
        values["extraEnv"] = [{"name": key, "value": value} for key, value in plan.env.items()]
    return values


def summary(plan: Plan, output: Path, instance_kind: str) -> str:
    gpus = f"; give the server {plan.gpus} GPU{'s' if plan.gpus != 1 else ''}" if plan.gpus else ""
    kind = {"gpu": f"1 on each of GPUs {list(range(max(plan.gpus, 1)))} (KIND_GPU; fails to load without them)",
            "cpu": "1 on the CPU (KIND_CPU)",
            "auto": f"1 on each GPU the server sees, or 1 on the CPU where there is none (KIND_AUTO{gpus}; "
                    "--instance-kind gpu pins them)"}[instance_kind]
    lines = [f"wrote {output} (Triton model {output.name!r})",
             f"  handler:   {plan.handler}" + ("" if plan.builtin else " (served as it is, generic custom model)")]
    if plan.python_path:
        lines.append(f"  code:      {', '.join(plan.python_path)} (python_path)")
    if plan.requirements:
        origins = sorted(set(plan.requirement_origins), key=plan.requirement_origins.index)
        lines.append(f"  packages:  {' '.join(plan.requirements)} (from {', '.join(origins)})")
        lines.append(f"  python env: {plan.env_path} (EXECUTION_ENV_PATH)" if plan.env_path else
                     "  python env: not built (--no-env): install the packages where the server runs")
    if plan.builtin is not None:
        lines.append(f"  weights:   {plan.weights or '(the built-in default, from its environment variable)'}")
    if plan.parameters:
        lines.append("  parameters: " + ", ".join(f"{k}={v!r}" for k, v in sorted(plan.parameters.items())))
    lines.append(f"  instances: {kind}")
    lines.append(f"  replicas:  {plan.replicas} (Kubernetes: helm --set replicaCount={plan.replicas} "
                 f"--set gpusPerReplica={plan.gpus}, or --values-file)")
    if plan.env:
        lines.append("  env:       " + " ".join(f"{k}=..." for k in plan.env) + " (set them in the server's environment)")
    lines.extend(f"  note: {note}" for note in plan.notes)
    return "\n".join(lines)


# ---- command line --------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m mosaic_serving.mosaicml_import",
        description="Turn a MosaicML inference deployment YAML into a Triton model repository entry.",
    )
    parser.add_argument("deployment", type=Path, help="the MosaicML deployment YAML")
    parser.add_argument("--output", "-o", type=Path, default=None,
                        help="the model folder to write (default: model_repository/<the deployment's name>)")
    parser.add_argument("--weights", default=None,
                        help="weights for a built-in handler (hub id or directory), instead of the YAML's")
    parser.add_argument("--instance-kind", choices=("gpu", "cpu", "auto"), default="auto",
                        help="Triton instance kind (default auto: the GPUs where there are some, else the CPU; "
                             "gpu pins the deployment's GPUs 0..N-1 and fails to load without them)")
    parser.add_argument("--git-repo", action="append", default=[], metavar="OWNER/NAME=DIR",
                        help="a local checkout for a git_repo integration (put on the model's python_path); repeatable")
    parser.add_argument("--env-cache", type=Path, default=None,
                        help="where the handlers' Python environments are built and cached "
                             "(default: $MOSAIC_SERVING_ENV_CACHE or ~/.cache/mosaic-serving/python-envs)")
    parser.add_argument("--no-env", action="store_true",
                        help="do not build the handler's own Python environment (it runs in the server's)")
    parser.add_argument("--ignore-requirements-txt", action="store_true",
                        help="leave out the requirements.txt next to the handler's module")
    parser.add_argument("--pip-package", action="append", default=[], metavar="REQUIREMENT",
                        help="one more requirement for the handler's environment (e.g. a pin its packages "
                             "forgot); repeatable")
    parser.add_argument("--include", type=Path, action="append", default=[],
                        help="a file or package to copy next to model.py (a custom handler's module); repeatable")
    parser.add_argument("--templates", type=Path, default=None,
                        help="the model repository holding the built-in models to copy (default: found)")
    parser.add_argument("--values-file", type=Path, default=None,
                        help="also write Helm values (replicaCount, gpusPerReplica, extraEnv) for deploy/helm")
    parser.add_argument("--force", action="store_true", help="replace --output if it exists")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        deployment = load_deployment(args.deployment)
        name = args.output.name if args.output else str(deployment.get("name") or "")
        if not name:
            raise DeploymentImportError("the deployment has no `name`; pass --output DIR to name the model")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
            raise DeploymentImportError(f"{name!r} cannot name a Triton model: use letters, digits, "
                                        "'-', '_' and '.' (pass --output DIR to choose the name)")
        output = args.output or Path("model_repository") / name
        git_repos = dict(parse_git_repo_option(text) for text in args.git_repo)
        plan = plan_import(deployment, name=output.name, weights=args.weights, git_repos=git_repos,
                           includes=args.include, use_requirements_txt=not args.ignore_requirements_txt)
        instance_kind = args.instance_kind
        if args.pip_package:
            if plan.builtin is not None:
                raise DeploymentImportError("--pip-package applies to a handler class served as it is; "
                                            f"{plan.handler} is built in and runs in the server's environment")
            plan.requirements.extend(args.pip_package)
            plan.requirement_origins.extend(["--pip-package"] * len(args.pip_package))
        templates = find_templates(output, args.templates, plan.template)
        if plan.requirements and not args.no_env:
            env = python_env.build_env(plan.requirements, args.env_cache, log=lambda m: print(m, file=sys.stderr))
            plan.env_path = str(env)
        write_model(plan, output, templates, instance_kind, args.deployment.name, args.include, args.force)
        if args.values_file:
            args.values_file.write_text(yaml.safe_dump(helm_values(plan), sort_keys=False))
    except (DeploymentImportError, SourceError, python_env.EnvBuildError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(summary(plan, output, instance_kind))
    if args.values_file:
        print(f"wrote {args.values_file} (helm install ... -f {args.values_file})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
