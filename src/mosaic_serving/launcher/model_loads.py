"""The models' handler loads, as seen from outside the server.

Our models build their handlers in the background (see `mosaic_serving.triton.loading`), so
Triton calls a model ready while its weights are still loading. Each model instance reports
its load on the metrics port as the gauge `mosaic_model_load_state` (0 loading, 1 loaded,
-1 failed): the launcher and the readiness probe (`probe.py`) wait for every one to say
loaded. A model whose load failed can be loaded again with its handler built in the
foreground: that load fails inside Triton, which then lists the model as UNAVAILABLE with
the reason, as for any failed load.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from typing import TYPE_CHECKING

from mosaic_serving.load_state import LOAD_STATE_METRIC, LoadState

if TYPE_CHECKING:
    from mosaic_serving.launcher.server import LocalTritonServer

_SAMPLE = re.compile(rf"^{LOAD_STATE_METRIC}\{{([^}}]*)\}} (\S+)$", re.MULTILINE)
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def parse_load_states(metrics_text: str) -> dict[str, list[LoadState]]:
    """Each model's instance load states from Prometheus text: {"mpt": [LoadState.LOADED], ...}."""
    states: dict[str, list[LoadState]] = {}
    for labels, value in _SAMPLE.findall(metrics_text):
        model = dict(_LABEL.findall(labels)).get("model", "")
        states.setdefault(model, []).append(LoadState(int(float(value))))
    return states


def model_load_state(instance_states: list[LoadState]) -> LoadState:
    """A model's state from its instances': failed if one failed, loaded if all loaded."""
    if LoadState.FAILED in instance_states:
        return LoadState.FAILED
    return LoadState.LOADED if all(state == LoadState.LOADED for state in instance_states) else LoadState.LOADING


def load_states(metrics_url: str) -> dict[str, LoadState]:
    """The load state of each model that reports one (models without our adapter do not);
    empty when the metrics port does not answer."""
    try:
        with urllib.request.urlopen(f"http://{metrics_url}/metrics", timeout=5) as response:
            text = response.read().decode()
    except (urllib.error.URLError, OSError):
        return {}
    return {model: model_load_state(states) for model, states in parse_load_states(text).items()}


def reload_in_foreground(server: "LocalTritonServer", model: str) -> str | None:
    """Load `model` again with its handler built inside `initialize`: the reason Triton gives
    when that fails, None when it loaded."""
    with urllib.request.urlopen(f"http://{server.http_url}/v2/models/{model}/config", timeout=30) as response:
        config = json.loads(response.read())
    config.setdefault("parameters", {})["load_in_background"] = {"string_value": "false"}
    server.repository_request(f"models/{model}/unload")
    server.repository_request(f"models/{model}/load", {"parameters": {"config": json.dumps(config)}})
    state = server.model_states().get(model, {})
    return None if state.get("state") == "READY" else state.get("reason", "unknown reason")
