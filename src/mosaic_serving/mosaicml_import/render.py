"""A plan rendered as text: the model's config.pbtxt, Helm values, and the report printed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mosaic_serving.mosaicml_import.builtin_models import WEIGHTS_PARAMETER
from mosaic_serving.mosaicml_import.deployment import DeploymentImportError
from mosaic_serving.mosaicml_import.plan import Plan
from mosaic_serving.triton.config import EXECUTION_ENV_PARAMETER, parse_value


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


def helm_values(plan: Plan) -> dict[str, Any]:
    """Values for deploy/helm/mosaic-serving that match the deployment's scale-out."""
    values: dict[str, Any] = {"replicaCount": plan.replicas, "gpusPerReplica": plan.gpus}
    if plan.env:
        values["extraEnv"] = [{"name": key, "value": value} for key, value in plan.env.items()]
    return values


def summary(plan: Plan, output: Path, instance_kind: str) -> str:
    """The report printed after an import: what was written, and every note."""
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
