"""The generic model for a user's own handler class: JSON request in, JSON response out.

config.pbtxt names the class (`handler`: "module.Class"; a module next to model.py works,
since Triton puts the model's folders on sys.path) and its constructor kwargs (every other
parameter). The model is decoupled when the class has `predict_stream`; that is decided in
`auto_complete_config`, so config.pbtxt need not say it.
- input `request` STRING [1]: one MosaicML request dict as JSON; optional `stream` BOOL [1].
- output `response` STRING [1]: `predict`'s result for the request, as JSON; when streaming,
  one response per item that `predict_stream` yields.
A decoupled model serves each request on its own thread; `max_concurrent_requests` (default
64) bounds them, and a request beyond it gets UNAVAILABLE at once.
"""

from __future__ import annotations

import importlib
import json
import threading
from typing import Any

import triton_python_backend_utils as pb_utils

from mosaic_serving.errors import InvalidRequestError, OverloadedError
from mosaic_serving.params import REQUIRED, Field
from mosaic_serving.triton.adapter import FINAL, BatchedModel, error_response
from mosaic_serving.triton.config import config_parameters
from mosaic_serving.triton.tensors import string_tensor


def load_handler_class(spec: str) -> type:
    """The class named by "package.module.Class"."""
    module_name, _, class_name = spec.rpartition(".")
    return getattr(importlib.import_module(module_name), class_name)


def decode_request(text: str) -> dict[str, Any]:
    try:
        request = json.loads(text)
    except json.JSONDecodeError as error:
        raise InvalidRequestError(f"input tensor 'request' is not valid JSON: {error}") from None
    if not isinstance(request, dict):
        raise InvalidRequestError(f"input tensor 'request' must be a JSON object, got {request!r}")
    return request


def response_tensor(result: Any) -> pb_utils.Tensor:
    return pb_utils.Tensor("response", string_tensor([json.dumps(result)]))


class TritonPythonModel(BatchedModel):
    inputs = [Field("request", str, REQUIRED), Field("stream", bool, False)]

    @staticmethod
    def auto_complete_config(config):
        handler_class = load_handler_class(config_parameters(config.as_dict())["handler"])
        config.set_model_transaction_policy(dict(decoupled=hasattr(handler_class, "predict_stream")))
        return config

    def create_handler(self, kwargs: dict[str, Any]) -> Any:
        handler_class = load_handler_class(kwargs.pop("handler"))
        self.decoupled = pb_utils.using_decoupled_model_transaction_policy(self.model_config)
        self.max_concurrent_requests = int(kwargs.pop("max_concurrent_requests", 64))
        self.slots = threading.BoundedSemaphore(self.max_concurrent_requests)
        return handler_class(**kwargs)

    def run(self, rows: list[dict[str, Any]]) -> list[Any]:
        return self.handler.predict([decode_request(row["request"]) for row in rows])

    def output_tensors(self, results: list[Any]) -> list[pb_utils.Tensor]:
        """One response row per request row ([rows, 1] when config.pbtxt batches, else [1])."""
        if self.batched:
            return [pb_utils.Tensor("response", string_tensor([json.dumps(r) for r in results], (len(results), 1)))]
        [result] = results
        return [response_tensor(result)]

    def execute(self, requests: list):
        if not self.decoupled:
            return super().execute(requests)
        for request in requests:
            sender = request.get_response_sender()
            if not self.slots.acquire(blocking=False):
                busy = OverloadedError(
                    f"{self.max_concurrent_requests} requests are already running, the limit "
                    "(max_concurrent_requests); retry later"
                )
                sender.send(error_response(busy), flags=FINAL)
                continue
            threading.Thread(target=self._serve_decoupled, args=(request, sender), daemon=True).start()
        return None

    def _serve_decoupled(self, request, sender) -> None:
        """One request of a streaming handler; frees its slot whatever happens."""
        try:
            self._stream(request, sender)
        finally:
            self.slots.release()

    def _stream(self, request, sender) -> None:
        """Each streamed item, or one result, then FINAL (an error response on failure)."""
        try:
            [row] = self.read(request)
            model_request = decode_request(row["request"])
            if not row["stream"]:
                [result] = self.handler.predict([model_request])
                sender.send(pb_utils.InferenceResponse([response_tensor(result)]), flags=FINAL)
                return
            items = self.handler.predict_stream(**model_request)
            try:
                for item in items:
                    if request.is_cancelled():
                        break
                    sender.send(pb_utils.InferenceResponse([response_tensor(item)]))
            finally:
                close = getattr(items, "close", None)
                if close is not None:
                    close()  # a generator's cleanup runs now, also when the client cancelled
            sender.send(flags=FINAL)
        except Exception as error:  # noqa: BLE001 - becomes this request's error response
            sender.send(error_response(error), flags=FINAL)
