"""Handler constructor kwargs from a Triton model config.

Every `parameters` entry of `config.pbtxt` becomes a handler keyword argument, except the
adapter's own (ADAPTER_PARAMETERS). Values may name environment variables,
`${MPT_MODEL:-mosaicml/mpt-7b-instruct}`, so one repository serves real weights on a GPU host
and tiny local models elsewhere without edits. Values are JSON literals when they parse as
one ("8", "true", "0.5"), strings otherwise.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Mapping

# The Python backend's parameter naming the Python environment a model's stub runs in.
EXECUTION_ENV_PARAMETER = "EXECUTION_ENV_PATH"
# Parameters the shared adapter (or the backend) takes for itself; every other one is a handler
# kwarg. `max_request_bytes`: any model; `handler`, `max_concurrent_requests`, `python_path`:
# the generic custom model.
ADAPTER_PARAMETERS = frozenset({"max_request_bytes", "handler", "max_concurrent_requests", "python_path",
                                EXECUTION_ENV_PARAMETER})

_ENV_REFERENCE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}")


def expand_env(value: str, environ: Mapping[str, str] = os.environ) -> str:
    """Replace `${NAME}` and `${NAME:-default}` with the environment's value."""

    def substitute(match: re.Match) -> str:
        name, default = match.group("name"), match.group("default")
        if environ.get(name):
            return environ[name]
        if default is None:
            raise ValueError(f"config parameter refers to ${{{name}}}, which is not set")
        return default

    return _ENV_REFERENCE.sub(substitute, value)


def parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def config_parameters(model_config: dict, environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """`parameters` of a model config (as Triton passes it, JSON-decoded) as Python values."""
    raw = model_config.get("parameters", {})
    return {key: parse_value(expand_env(entry["string_value"], environ)) for key, entry in raw.items()}


def instance_device(args: Mapping[str, str]) -> str:
    """The torch device of this model instance: its GPU for KIND_GPU, else the CPU."""
    if args.get("model_instance_kind") == "GPU":
        return f"cuda:{args.get('model_instance_device_id', '0')}"
    return "cpu"

