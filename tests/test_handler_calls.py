"""Handler classes are called the way their own signatures ask (MosaicML's shapes included)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mosaic_serving import InvalidRequestError
from mosaic_serving.triton.handler_calls import (
    HandlerClassError,
    construct,
    predict,
    predict_stream,
    result_json,
)


class ListHandler:
    """MosaicML's MPT shape: no `device`, predict(list), predict_stream(**inputs)."""

    def __init__(self, model_name: str, attn_impl: str = "torch"):
        self.model_name, self.attn_impl = model_name, attn_impl

    def predict(self, model_requests):
        return [request["input"].upper() for request in model_requests]

    def predict_stream(self, **inputs):
        yield from inputs["input"].split()


class KeywordHandler:
    """MosaicML's diffusion shape: no constructor arguments, predict(**inputs) per request."""

    def __init__(self):
        self.calls = 0

    def predict(self, **inputs):
        self.calls += 1
        if "prompt" not in inputs:
            raise KeyError("prompt")
        return [inputs["prompt"].encode()] * int(inputs.get("num_images_per_prompt", 1))


class DeviceHandler:
    def __init__(self, scale: int, device: str = "unset"):
        self.scale, self.device = scale, device

    def predict(self, model_requests):
        return [self.device] * len(model_requests)

    def predict_stream(self, model_requests):
        [request] = model_requests
        yield request["input"]


def test_device_only_for_constructors_that_take_it():
    assert construct(DeviceHandler, {"scale": 2}, "cuda:1").device == "cuda:1"
    assert construct(DeviceHandler, {"scale": 2, "device": "cpu"}, "cuda:1").device == "cpu"  # the user's wins
    handler = construct(ListHandler, {"model_name": "m"}, "cuda:0")
    assert (handler.model_name, handler.attn_impl) == ("m", "torch")
    assert isinstance(construct(KeywordHandler, {}, "cpu"), KeywordHandler)


def test_constructor_errors_name_the_class_and_the_arguments():
    with pytest.raises(HandlerClassError) as caught:
        construct(ListHandler, {"model_name": "m", "beams": 4}, "cpu")
    message = str(caught.value)
    assert "ListHandler" in message and "__init__" in message and "beams" in message and "TypeError" in message


def test_list_predict_and_keyword_predict():
    assert predict(ListHandler("m"), [{"input": "a"}, {"input": "b"}]) == ["A", "B"]
    handler = KeywordHandler()
    results = predict(handler, [{"prompt": "x", "num_images_per_prompt": 2}, {"prompt": "y"}])
    assert results == [[b"x", b"x"], [b"y"]] and handler.calls == 2


def test_predict_errors_name_the_class_but_bad_input_stays_bad_input():
    with pytest.raises(HandlerClassError, match=r"KeywordHandler raised KeyError in predict: 'prompt'"):
        predict(KeywordHandler(), [{"negative_prompt": "x"}])

    class Refuses:
        def predict(self, model_requests):
            raise InvalidRequestError("request field 'input' is missing")

    with pytest.raises(InvalidRequestError):
        predict(Refuses(), [{}])


def test_predict_must_return_one_result_per_request():
    class Short:
        def predict(self, model_requests):
            return model_requests[:1]

    with pytest.raises(HandlerClassError, match="returned 1 results for 2 requests"):
        predict(Short(), [{}, {}])


def test_predict_stream_follows_the_signature_and_closes_the_handler_generator():
    assert list(predict_stream(ListHandler("m"), {"input": "a b c"})) == ["a", "b", "c"]
    assert list(predict_stream(DeviceHandler(1), {"input": "whole"})) == ["whole"]

    closed = []

    class Endless:
        def predict_stream(self, **inputs):
            try:
                while True:
                    yield inputs["input"]
            finally:
                closed.append(True)

    items = predict_stream(Endless(), {"input": "x"})
    assert next(items) == "x"
    items.close()
    assert closed == [True]

    class Breaks:
        def predict_stream(self, **inputs):
            yield 1
            raise RuntimeError("out of memory")

    with pytest.raises(HandlerClassError, match="Breaks raised RuntimeError in predict_stream: out of memory"):
        list(predict_stream(Breaks(), {}))


def test_results_as_json():
    handler = ListHandler("m")
    assert json.loads(result_json(handler, [b"aGk=", np.float32(0.5), np.arange(3)])) == ["aGk=", 0.5, [0, 1, 2]]
    assert json.loads(result_json(handler, b"\xff\x00")) == {"base64": "/wA="}
    with pytest.raises(HandlerClassError, match="ListHandler returned"):
        result_json(handler, object())
