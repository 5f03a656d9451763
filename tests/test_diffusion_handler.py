"""StableDiffusionHandler on the tiny pipeline: PNG output, seeding, batching, validation."""

import io
import math

import numpy as np
import pytest
from PIL import Image

from mosaic_serving.errors import InvalidRequestError
from mosaic_serving.handlers.diffusion import ImageRequest, StableDiffusionHandler

SMALL = {"height": 64, "width": 64, "num_inference_steps": 2}


@pytest.fixture(scope="module")
def handler(tiny_diffusion_path):
    return StableDiffusionHandler(
        str(tiny_diffusion_path), max_pixels=96 * 96, max_images_per_request=4, max_inference_steps=10
    )


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)), dtype=np.int16)


def one_image(handler, **fields) -> bytes:
    [[image]] = handler.generate([{"prompt": "a photo of a cat", **SMALL, **fields}])
    return image


def test_defaults_are_mosaicml_defaults(tiny_diffusion_path):
    defaults = StableDiffusionHandler(str(tiny_diffusion_path)).check_inputs({"prompt": "a cat"})
    assert defaults == ImageRequest(["a cat"], [""], 512, 512, 50, 7.5, 0)


def test_predict_returns_pngs_of_the_asked_size_and_count(handler):
    results = handler.predict(
        [
            {"input": {"prompt": ["a cat", "a dog"], "height": 32, "width": 64, "num_images_per_prompt": 2},
             "parameters": {"num_inference_steps": 2}},
            {"input": "blue sky", "parameters": SMALL},
        ]
    )
    assert [len(images) for images in results] == [4, 1]
    for images, size in zip(results, [(64, 32), (64, 64)]):
        for png in images:
            image = Image.open(io.BytesIO(png))
            assert (image.format, image.mode, image.size) == ("PNG", "RGB", size)


def test_same_seed_same_bytes_and_different_seed_different_image(handler):
    assert one_image(handler, seed=3) == one_image(handler, seed=3)
    assert np.abs(pixels(one_image(handler, seed=3)) - pixels(one_image(handler, seed=4))).mean() > 10


def test_images_of_one_request_differ(handler):
    [first, second] = handler.generate([{"prompt": "a cat", "num_images_per_prompt": 2, **SMALL}])[0]
    assert np.abs(pixels(first) - pixels(second)).mean() > 10


def test_request_gives_the_same_images_alone_and_batched(handler):
    request = {"prompt": ["a photo of a cat", "a red dog"], "negative_prompt": "blurry", "seed": 5, **SMALL}
    other = {"prompt": "blue sky", "seed": 6, "num_images_per_prompt": 2, **SMALL}
    alone = handler.generate([request])[0]
    batched = handler.generate([other, request, other])[1]
    assert len(batched) == len(alone) == 2
    for solo, in_batch in zip(alone, batched):
        # Kernels round differently at another batch size: at most one level, on a few pixels.
        difference = np.abs(pixels(solo) - pixels(in_batch))
        assert difference.max() <= 1 and difference.mean() < 0.01


def test_negative_prompt_changes_the_image(handler):
    plain, negative = one_image(handler), one_image(handler, negative_prompt="blurry")
    assert np.abs(pixels(plain) - pixels(negative)).mean() > 0.3


BAD_REQUESTS = [
    ({}, "'prompt' is required"),
    ({"prompt": ""}, "'prompt'"),
    ({"prompt": "   "}, "'prompt'"),
    ({"prompt": []}, "'prompt'"),
    ({"prompt": ["a cat", ""]}, "'prompt'"),
    ({"prompt": 7}, "'prompt'"),
    ({"height": 60}, "'height'"),
    ({"height": 0}, "'height'"),
    ({"width": -64}, "'width'"),
    ({"width": "64"}, "'width'"),
    ({"height": 128, "width": 128}, "'height' x 'width'"),
    ({"num_inference_steps": 0}, "'num_inference_steps'"),
    ({"num_inference_steps": 11}, "'num_inference_steps'"),
    ({"num_images_per_prompt": 0}, "'num_images_per_prompt'"),
    ({"num_images_per_prompt": 5}, "'num_images_per_prompt'"),
    ({"prompt": ["a", "b", "c"], "num_images_per_prompt": 2}, "'num_images_per_prompt'"),
    ({"guidance_scale": -0.5}, "'guidance_scale'"),
    ({"guidance_scale": math.nan}, "'guidance_scale'"),
    ({"guidance_scale": True}, "'guidance_scale'"),
    ({"seed": -1}, "'seed'"),
    ({"seed": 2**64}, "'seed'"),
    ({"negative_prompt": ["x", "y"]}, "'negative_prompt'"),
    ({"negative_prompt": 3}, "'negative_prompt'"),
    ({"steps": 2}, "'steps'"),
]


@pytest.mark.parametrize("fields, message", BAD_REQUESTS)
def test_bad_field_is_rejected_naming_it(handler, fields, message):
    request = {"prompt": "a cat", **SMALL, **fields} if fields else {}
    with pytest.raises(InvalidRequestError, match=message):
        handler.generate([{"prompt": "a good request", **SMALL}, request])


@pytest.mark.parametrize(
    "request_, message",
    [
        ({"parameters": SMALL}, "'input' is required"),
        ({"inputs": "a cat"}, "'inputs'"),
        ({"input": "a cat", "parameters": [64]}, "'parameters'"),
        ({"input": {"prompt": "a cat", "seed": 1}, "parameters": {"seed": 2}}, "'seed'"),
        ({"input": {"prompt": "a cat", **SMALL, "eta": 0.5}}, "'eta'"),
    ],
)
def test_bad_mosaicml_request_is_rejected_naming_the_key(handler, request_, message):
    with pytest.raises(InvalidRequestError, match=message):
        handler.predict([request_])
