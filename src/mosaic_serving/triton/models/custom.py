"""The generic model for a user's own handler class: JSON request in, JSON response out.

config.pbtxt names the class (`handler`: "module.Class"; a module next to model.py works,
since Triton puts the model's folders on sys.path, and `python_path`, a JSON list of folders,
adds others such as a git checkout) and its constructor kwargs (every other parameter). The
class is called the way its signatures ask (see `handler_calls`): `device` only when its
constructor takes it, `predict(**request)` per request or `predict(requests)`. The model is
decoupled when the class has `predict_stream`; that is decided in `auto_complete_config`,
so config.pbtxt need not say it.
- input `request` STRING [1]: one MosaicML request dict as JSON; optional `stream` BOOL [1].
- output `response` STRING [1]: `predict`'s result for the request, as JSON; when streaming,
  one response per item that `predict_stream` yields.
A decoupled model serves each request on its own thread; `max_concurrent_requests` (default
64) bounds them, and a request beyond it gets UNAVAILABLE at once.
"""

from __future__ import annotations

import importlib
import json
import sys
import threading
from typing import Any

import triton_python_backend_utils as pb_utils

from mosaic_serving.errors import InvalidRequestError, OverloadedError
from mosaic_serving.params import REQUIRED
from mosaic_serving.triton import handler_calls
from mosaic_serving.triton.adapter import BatchedModel
from mosaic_serving.triton.config import config_parameters
from mosaic_serving.triton.contract import TensorField, TensorSpec, complete_config
from mosaic_serving.triton.responses import ResponseStream
from mosaic_serving.triton.tensors import string_tensor


def extend_python_path(folders: Any) -> None:
    """Put `python_path`'s folders (a JSON list, or one folder) first on sys.path."""
    if not folders:
        return
    for folder in reversed([folders] if isinstance(folders, str) else list(folders)):
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))


def load_handler_class(spec: str) -> type:
    """The class named by "package.module.Class" (module names may hold '-', as MosaicML's
    `examples.inference-deployments...` do: importlib finds them by folder name)."""
    module_name, _, class_name = spec.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as error:
        raise ImportError(f"cannot load handler class {spec!r}: {type(error).__name__}: {error}") from error


def decode_request(text: str) -> dict[str, Any]:
    try:
        request = json.loads(text)
    except json.JSONDecodeError as error:
        raise InvalidRequestError(f"input tensor 'request' is not valid JSON: {error}") from None
    if not isinstance(request, dict):
        raise InvalidRequestError(f"input tensor 'request' must be a JSON object, got {request!r}")
    return request


class TritonPythonModel(BatchedModel):
    inputs = [TensorField("request", str, REQUIRED), TensorField("stream", bool, False)]
    outputs = [TensorSpec("response", "TYPE_STRING", (1,))]
    passes_device = False  # `device` goes only to a constructor that takes it (create_handler)

    @staticmethod
    def auto_complete_config(config):
        parameters = config_parameters(config.as_dict())
        extend_python_path(parameters.get("python_path"))
        handler_class = load_handler_class(parameters["handler"])
        config.set_model_transaction_policy(dict(decoupled=hasattr(handler_class, "predict_stream")))
        return complete_config(config, TritonPythonModel.inputs, TritonPythonModel.outputs)

    def configure(self, kwargs: dict[str, Any]) -> None:
        self.decoupled = pb_utils.using_decoupled_model_transaction_policy(self.model_config)
        self.max_concurrent_requests = int(kwargs.pop("max_concurrent_requests", 64))
        self.slots = threading.BoundedSemaphore(self.max_concurrent_requests)

    def create_handler(self, kwargs: dict[str, Any]) -> Any:
        extend_python_path(kwargs.pop("python_path", None))
        handler_class = load_handler_class(kwargs.pop("handler"))
        return handler_calls.construct(handler_class, kwargs, self.device)

    def run(self, rows: list[dict[str, Any]]) -> list[Any]:
        return handler_calls.predict(self.handler, [decode_request(row["request"]) for row in rows])

    def response_tensor(self, result: Any) -> pb_utils.Tensor:
        return pb_utils.Tensor("response", string_tensor([handler_calls.result_json(self.handler, result)]))

    def output_tensors(self, results: list[Any]) -> list[pb_utils.Tensor]:
        """One response row per request row ([rows, 1] when config.pbtxt batches, else [1])."""
        if self.batched:
            texts = [handler_calls.result_json(self.handler, result) for result in results]
            return [pb_utils.Tensor("response", string_tensor(texts, (len(results), 1)))]
        [result] = results
        return [self.response_tensor(result)]

    def execute(self, requests: list):
        if not self.decoupled:
            return super().execute(requests)
        for request in requests:
            responses = ResponseStream(request)
            if not self.slots.acquire(blocking=False):
                responses.fail(OverloadedError(
                    f"{self.max_concurrent_requests} requests are already running, the limit "
                    "(max_concurrent_requests); retry later"
                ))
                continue
            threading.Thread(target=self._serve_decoupled, args=(request, responses), daemon=True).start()
        return None

    def _serve_decoupled(self, request, responses: ResponseStream) -> None:
        """One request of a streaming handler; frees its slot whatever happens."""
        try:
            self._stream(request, responses)
        finally:
            self.slots.release()

    def _stream(self, request, responses: ResponseStream) -> None:
        """Each streamed item, or one result, then FINAL (an error response on failure)."""
        try:
            [row] = self.read(request)
            model_request = decode_request(row["request"])
            if not row["stream"]:
                [result] = handler_calls.predict(self.handler, [model_request])
                responses.send(pb_utils.InferenceResponse([self.response_tensor(result)]), final=True)
                return
            items = handler_calls.predict_stream(self.handler, model_request)
            try:
                for item in items:
                    if responses.is_cancelled():
                        break
                    responses.send(pb_utils.InferenceResponse([self.response_tensor(item)]))
            finally:
                close = getattr(items, "close", None)
                if close is not None:
                    close()  # a generator's cleanup runs now, also when the client cancelled
            responses.finish()
        except Exception as error:  # noqa: BLE001 - becomes this request's error response
            if not responses.finished:
                responses.fail(error)
