"""Calling a user's handler class the way its own signatures ask.

MosaicML's handler classes differ in shape: `MPTModelHandler(model_name, ...)` takes no
`device`, `predict(model_requests)` takes a list of request dicts, while
`StableDiffusionHandler.predict(self, **inputs)` takes one request as keyword arguments. So
the generic model reads the class instead of assuming a convention:
- `device` is passed only to a constructor that names it (or takes `**kwargs`);
- `predict` / `predict_stream` that take only `**inputs` are called once per request with the
  request dict unpacked; otherwise they get a list of requests.
An exception raised inside the class becomes a HandlerClassError that names the class, so a
server log or an INTERNAL error says whose code failed. InvalidRequestError (bad input, which
the class itself reports) passes through unchanged.

No Triton import: this module also runs in tests and in per-model Python environments.
"""

from __future__ import annotations

import base64
import inspect
import json
from typing import Any, Callable, Iterator

from mosaic_serving.errors import InvalidRequestError, OverloadedError


class HandlerClassError(RuntimeError):
    """An exception raised by the user's handler class (its message names the class)."""


def class_path(handler_class: type) -> str:
    return f"{handler_class.__module__}.{handler_class.__qualname__}"


def _parameters(function: Callable) -> list[inspect.Parameter]:
    try:
        return list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError):  # a builtin without a signature: assume it takes anything
        return [inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD)]


def accepts_keyword(function: Callable, name: str) -> bool:
    """Whether `function(name=...)` is accepted: a parameter of that name, or `**kwargs`."""
    return any(
        p.kind == p.VAR_KEYWORD or (p.name == name and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD))
        for p in _parameters(function)
    )


def takes_one_request_as_keywords(method: Callable) -> bool:
    """True for `predict(self, **inputs)`: no positional parameter, only `**kwargs`
    (and keyword-only ones). `method` is bound, so `self` is not listed."""
    parameters = _parameters(method)
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)]
    return not positional and any(p.kind == p.VAR_KEYWORD for p in parameters)


def _wrap(handler_class: type, what: str, error: Exception) -> Exception:
    """The error to raise for `error`, raised by the class while doing `what`."""
    if isinstance(error, (InvalidRequestError, OverloadedError, HandlerClassError)):
        return error
    wrapped = HandlerClassError(
        f"handler class {class_path(handler_class)} raised {type(error).__name__} in {what}: {error}"
    )
    wrapped.__cause__ = error
    return wrapped


def construct(handler_class: type, kwargs: dict[str, Any], device: str | None = None) -> Any:
    """`handler_class(**kwargs)`, adding `device` only when the constructor takes it."""
    kwargs = dict(kwargs)
    if device is not None and "device" not in kwargs and accepts_keyword(handler_class, "device"):
        kwargs["device"] = device
    try:
        return handler_class(**kwargs)
    except Exception as error:  # noqa: BLE001 - re-raised naming the class
        names = ", ".join(sorted(kwargs)) or "no arguments"
        raise _wrap(handler_class, f"__init__ (called with {names})", error) from error


def predict(handler: Any, requests: list[dict[str, Any]]) -> list[Any]:
    """One result per request, from `predict(requests)` or `predict(**request)` per request."""
    method = handler.predict
    try:
        if takes_one_request_as_keywords(method):
            results = [method(**request) for request in requests]
        else:
            results = list(method(requests))
    except Exception as error:  # noqa: BLE001 - re-raised naming the class
        raise _wrap(type(handler), "predict", error) from error
    if len(results) != len(requests):
        raise HandlerClassError(
            f"handler class {class_path(type(handler))}: predict returned {len(results)} results "
            f"for {len(requests)} requests (it must return one result per request)"
        )
    return results


def predict_stream(handler: Any, request: dict[str, Any]) -> Iterator[Any]:
    """The items `predict_stream` yields for one request (`**request`, or `[request]`).

    A generator: closing it closes the handler's own generator, so its cleanup runs when a
    client cancels.
    """
    method = handler.predict_stream
    try:
        items = method(**request) if takes_one_request_as_keywords(method) else method([request])
        yield from items
    except Exception as error:  # noqa: BLE001 - re-raised naming the class
        raise _wrap(type(handler), "predict_stream", error) from error


def _json_default(value: Any) -> Any:
    """JSON for what handlers commonly return besides plain types: bytes (MosaicML's diffusion
    handler returns base64 PNGs as bytes) and numpy arrays and scalars."""
    if isinstance(value, (bytes, bytearray)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return {"base64": base64.b64encode(bytes(value)).decode("ascii")}
    for method in ("tolist", "item"):  # numpy arrays / scalars, torch tensors
        convert = getattr(value, method, None)
        if callable(convert):
            return convert()
    raise TypeError(f"a result of type {type(value).__name__} cannot be sent as JSON")


def result_json(handler: Any, result: Any) -> str:
    """`result` as JSON text; an unencodable result is an error naming the class."""
    try:
        return json.dumps(result, default=_json_default)
    except (TypeError, ValueError) as error:
        raise HandlerClassError(f"handler class {class_path(type(handler))} returned {error}") from None
