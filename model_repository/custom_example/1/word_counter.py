"""An example handler: a plain class with `predict` and `predict_stream`, no Triton code.

Request: {"input": "<text>"}. `predict` returns word counts; `predict_stream` yields the
words one by one. Served by model_repository/custom_example (see its config.pbtxt).
"""

from collections import Counter
from typing import Any, Iterator

from mosaic_serving import InvalidRequestError


class WordCountHandler:
    def __init__(self, lowercase: bool = False):
        self.lowercase = lowercase  # a constructor that names `device` would also get its device

    def predict(self, model_requests: list[dict[str, Any]]) -> list[dict[str, int]]:
        return [dict(Counter(self._words(request))) for request in model_requests]

    def predict_stream(self, **model_request: Any) -> Iterator[str]:
        yield from self._words(model_request)

    def _words(self, request: dict[str, Any]) -> list[str]:
        text = request.get("input")
        if not isinstance(text, str) or not text.strip():
            raise InvalidRequestError("request field 'input' must be a non-empty string")
        return (text.lower() if self.lowercase else text).split()
