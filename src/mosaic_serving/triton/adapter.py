"""The shared Triton Python-backend adapter: handler in, Triton model out.

`HandlerModel.initialize` reads config.pbtxt's parameters and starts building the handler
on this instance's device in the background (`loading.HandlerLoad`): Triton's Python backend
kills a backend process that stalls for a second while Triton waits on it, so nothing slow
runs while it waits in `initialize`. Two ways to execute:
- `BatchedModel` (dynamic batching): every row of every request in `execute` runs in one
  handler call; if that call fails, each request is run alone so that only the faulty
  request gets an error.
- decoupled models (streaming) send their responses themselves, through each request's
  `responses.ResponseStream`, see `models/mpt.py` and `models/custom.py`.
Requests that come during the load wait for it (`mpt`'s off `execute`).
Errors become responses: InvalidRequestError is INVALID_ARGUMENT, UnavailableError (a full
queue, a failed load) UNAVAILABLE, anything else INTERNAL.

Parameters the adapter itself takes from config.pbtxt (the rest go to the handler):
`max_request_bytes` (default 1 MiB): the input tensors' total size, checked before any
decoding, so an oversize request is refused clearly rather than tokenized or embedded.
`load_in_background` (default "true"): "false" builds the handler inside `initialize`, so
that a failure fails the load and Triton reports it (the launcher reloads a model whose
background load failed this way).
`EXECUTION_ENV_PATH` is the Python backend's (the environment the stub runs in), never a
handler kwarg.

Text files are read as UTF-8 in the backend process (`use_utf8_locale`), as in any Python
started from a shell. Each backend process starts a heartbeat of its own (`heartbeat`), so
that Triton waits for a process that stalls instead of failing its requests.
"""

from __future__ import annotations

import json
import locale
import subprocess
from typing import Any, ClassVar

import triton_python_backend_utils as pb_utils

from mosaic_serving.errors import InvalidRequestError
from mosaic_serving.handlers.model_path import check_model_path
from mosaic_serving.triton.contract import TensorField, TensorSpec, complete_config
from mosaic_serving.triton.config import EXECUTION_ENV_PARAMETER, config_parameters, instance_device
from mosaic_serving.load_state import LOAD_STATE_METRIC, LoadState
from mosaic_serving.triton import heartbeat
from mosaic_serving.triton.loading import HandlerLoad
from mosaic_serving.triton.metrics import BatchMetrics, ModelMetrics, best_effort
from mosaic_serving.triton.responses import error_response
from mosaic_serving.triton.tensors import read_rows, request_bytes

DEFAULT_MAX_REQUEST_BYTES = 1 << 20


class HandlerModel:
    """Builds the handler and reads request tensors; subclasses say which and how."""

    inputs: ClassVar[list[TensorField]] = []
    outputs: ClassVar[list[TensorSpec]] = []
    passes_device: ClassVar[bool] = True  # our handlers all take `device`; custom.py decides per class

    @classmethod
    def auto_complete_config(cls, config):
        """Triton asks before loading: the declared tensors go into the model configuration."""
        return complete_config(config, cls.inputs, cls.outputs)

    def initialize(self, args: dict[str, str]) -> None:
        use_utf8_locale()
        self.heartbeat = start_heartbeat()
        self.args = args
        self.model_config = json.loads(args["model_config"])
        self.batched = self.model_config.get("max_batch_size", 0) > 0
        kwargs = config_parameters(self.model_config)
        self.max_request_bytes = int(kwargs.pop("max_request_bytes", DEFAULT_MAX_REQUEST_BYTES))
        background = str(kwargs.pop("load_in_background", "true")).lower() != "false"
        kwargs.pop(EXECUTION_ENV_PARAMETER, None)  # the Python backend's own: the stub's environment
        self.device = instance_device(args)
        if self.passes_device:
            kwargs.setdefault("device", self.device)
        check_model_path(kwargs.get("model_name_or_path"))
        self.metrics = ModelMetrics(args)
        self.configure(kwargs)
        load_state = self.metrics.gauge(LOAD_STATE_METRIC, "0 while the handler loads, 1 once loaded, -1 if it failed")
        self.load = HandlerLoad(args.get("model_name", "model"), lambda: self.create_handler(kwargs),
                                lambda state: best_effort(lambda: load_state.set(int(state))), background)

    @property
    def handler(self) -> Any:
        """The handler, once loaded (waits for it); ModelLoadError (UNAVAILABLE) if it failed."""
        return self.load.result()

    def configure(self, kwargs: dict[str, Any]) -> None:
        """Set-up that must be quick (runs inside `initialize`): take this model's own parameters
        out of `kwargs`, the handler's constructor arguments."""

    def create_handler(self, kwargs: dict[str, Any]) -> Any:
        """Build the handler, on the load thread: import what it needs here, not at module level."""
        raise NotImplementedError

    def read(self, request) -> list[dict[str, Any]]:
        """The request's input tensors as one dict of Python values per batch row."""
        arrays = {}
        for field in self.inputs:
            tensor = pb_utils.get_input_tensor_by_name(request, field.name)
            if tensor is not None:
                arrays[field.name] = tensor.as_numpy()
        size = request_bytes(arrays)
        if size > self.max_request_bytes:
            raise InvalidRequestError(
                f"request inputs are {size} bytes, over the limit of {self.max_request_bytes} (max_request_bytes)"
            )
        return read_rows(arrays, self.inputs, self.batched)

    def finalize(self) -> None:
        if self.heartbeat is not None:
            self.heartbeat.kill()
            self.heartbeat.wait()
        if self.load.state != LoadState.LOADED:
            return  # a load still running ends with the process
        close = getattr(self.handler, "close", None)
        if close is not None:
            close()


def use_utf8_locale() -> None:
    """Make UTF-8 the encoding of files opened without one. The backend process embeds Python
    without taking the environment's locale (nor PYTHONUTF8), so it reads text as ASCII; torch's
    compiler, for one, then fails on its own templates and `mpt` decodes eagerly. Python looks
    the encoding up in the C locale at each `open`, so setting LC_CTYPE here is enough."""
    if locale.getpreferredencoding(False).lower().replace("-", "") == "utf8":
        return
    for name in ("C.UTF-8", "C.utf8", "en_US.UTF-8"):
        try:
            locale.setlocale(locale.LC_CTYPE, name)
            return
        except locale.Error:
            continue
    pb_utils.Logger.log_warn("no UTF-8 locale found: files are read in the process's default encoding")


def start_heartbeat() -> subprocess.Popen[bytes] | None:
    """This backend process's second heartbeat (`heartbeat`); None, with a warning, where it
    cannot start. Called on the process's main thread: the heartbeat dies with that thread."""
    try:
        return heartbeat.start()
    except (heartbeat.NoHeartbeat, OSError) as error:
        pb_utils.Logger.log_warn(f"this backend process has no second heartbeat ({error}): a stall of over a "
                                 "second will fail its requests and can abort the server")
        return None


class BatchedModel(HandlerModel):
    """A model whose requests, as dynamic batching delivers them, run in one handler call."""

    def initialize(self, args: dict[str, str]) -> None:
        super().initialize(args)
        self.batch_metrics = BatchMetrics(self.metrics)

    def run(self, rows: list[dict[str, Any]]) -> list[Any]:
        """One result per row, computed together."""
        raise NotImplementedError

    def output_tensors(self, results: list[Any]) -> list[pb_utils.Tensor]:
        """The response tensors of one request from its rows' results."""
        raise NotImplementedError

    def execute(self, requests: list) -> list[pb_utils.InferenceResponse]:
        return [self._response(outcome) for outcome in self._outcomes([self._read(r) for r in requests])]

    def _read(self, request) -> list[dict[str, Any]] | Exception:
        try:
            return self.read(request)
        except Exception as error:  # noqa: BLE001 - becomes this request's error response
            return error

    def _outcomes(self, requests: list[list[dict[str, Any]] | Exception]) -> list[list[Any] | Exception]:
        """Each request's results (or error): the rows of every readable request in one call;
        if that call fails, each request alone, so that only the faulty request gets an error."""
        valid = [rows for rows in requests if not isinstance(rows, Exception)]
        if valid:
            self.batch_metrics.batch(sum(len(rows) for rows in valid))
        try:
            results = iter(self.run([row for rows in valid for row in rows]))
            computed = {id(rows): [next(results) for _ in rows] for rows in valid}
        except Exception:  # noqa: BLE001 - find the faulty request by running each alone
            computed = {id(rows): self._run_alone(rows) for rows in valid}
        return [rows if isinstance(rows, Exception) else computed[id(rows)] for rows in requests]

    def _run_alone(self, rows: list[dict[str, Any]]) -> list[Any] | Exception:
        try:
            return self.run(rows)
        except Exception as error:  # noqa: BLE001 - becomes this request's error response
            return error

    def _response(self, outcome: list[Any] | Exception) -> pb_utils.InferenceResponse:
        if not isinstance(outcome, Exception):
            try:
                return pb_utils.InferenceResponse(output_tensors=self.output_tensors(outcome))
            except Exception as error:  # noqa: BLE001
                outcome = error
        self.batch_metrics.error(outcome)
        return error_response(outcome)
