"""Stable Diffusion text-to-image with MosaicML's `StableDiffusionHandler` request semantics.

Unlike MosaicML's handler, which let the last request's parameters win for a whole batch,
every request keeps its own settings: requests that can share a pipeline call (same size,
steps and guidance) are denoised together, the others separately, and each request's seed
decides its initial noise, so its images do not depend on what it was batched with (up to
float rounding in the batched UNet: a pixel may differ by one level).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import StableDiffusionPipeline
from PIL import Image

from mosaic_serving.devices import resolve_device, resolve_dtype
from mosaic_serving.errors import InvalidRequestError
from mosaic_serving.params import REQUIRED, SEED, Field, Rule, finite_at_least, in_range, parse_fields


@dataclass(frozen=True)
class ImageRequest:
    """A validated request, its prompts already repeated once per image to generate."""

    prompts: list[str]
    negative_prompts: list[str]
    height: int
    width: int
    num_inference_steps: int
    guidance_scale: float
    seed: int

    @property
    def batch_key(self) -> tuple[int, int, int, float]:
        """The settings one pipeline call shares across all its images."""
        return (self.height, self.width, self.num_inference_steps, self.guidance_scale)


class StableDiffusionHandler:
    """Generates PNG images from text prompts with a diffusers Stable Diffusion pipeline."""

    # The constructor kwargs a deployment may set (config.pbtxt parameters, MosaicML's
    # model_parameters); `device` is each instance's own. A test keeps this equal to __init__.
    CONSTRUCTOR_PARAMETERS = frozenset({"model_name_or_path", "dtype", "max_pixels", "max_images_per_request",
                                        "max_inference_steps", "max_images_per_batch"})

    def __init__(
        self,
        model_name_or_path: str,
        device: str | None = None,
        dtype: str | None = None,
        max_pixels: int = 1024 * 1024,
        max_images_per_request: int = 8,
        max_inference_steps: int = 150,
        max_images_per_batch: int = 8,
    ) -> None:
        """The limits bound one request (`max_pixels`, `max_images_per_request`,
        `max_inference_steps`) and one pipeline call (`max_images_per_batch`: requests batched
        together are split into calls of at most that many images, so memory stays bounded)."""
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.max_pixels = max_pixels
        self.max_images_per_request = max_images_per_request
        self.max_images_per_batch = max_images_per_batch
        self.fields = _fields(max_images_per_request, max_inference_steps)
        # Served images are not filtered: no safety checker is loaded, even from hub ids.
        self.pipeline = StableDiffusionPipeline.from_pretrained(
            model_name_or_path, dtype=self.dtype, safety_checker=None, requires_safety_checker=False
        ).to(self.device)
        self.pipeline.set_progress_bar_config(disable=True)

    def predict(self, model_requests: list[dict[str, Any]]) -> list[list[bytes]]:
        """MosaicML-style entry point: each request's PNG images, one list per request."""
        return self.generate([flatten_request(request) for request in model_requests])

    def generate(self, requests: list[dict[str, Any]]) -> list[list[bytes]]:
        """Generate for flat field dicts (a dynamically batched list from Triton).

        All requests are validated before any compute, so one bad request costs no model time.
        """
        # 1. Validate and fill in defaults.
        checked = [self.check_inputs(request) for request in requests]
        # 2. Group the requests that one pipeline call can serve, keeping their positions.
        groups: dict[tuple[int, int, int, float], list[int]] = {}
        for index, request in enumerate(checked):
            groups.setdefault(request.batch_key, []).append(index)
        # 3. Denoise and decode each group (in calls of bounded size), 4. encode as PNG.
        results: list[list[bytes]] = [[] for _ in checked]
        for indices in (chunk for group in groups.values() for chunk in self._chunks(group, checked)):
            images = self._run_group([checked[index] for index in indices])
            for index, request_images in zip(indices, images):
                results[index] = [encode_png(image) for image in request_images]
        return results

    def check_inputs(self, request: dict[str, Any]) -> ImageRequest:
        """Validate one flat request; raise InvalidRequestError naming the offending field."""
        values = parse_fields(request, self.fields)
        prompts, count = values["prompt"], values["num_images_per_prompt"]
        negative = values.get("negative_prompt", [""])
        if len(negative) not in (1, len(prompts)):
            raise InvalidRequestError(
                f"parameter 'negative_prompt' must be one string or one per prompt ({len(prompts)}), "
                f"got {len(negative)}"
            )
        if values["height"] * values["width"] > self.max_pixels:
            raise InvalidRequestError(
                f"parameters 'height' x 'width' must be at most {self.max_pixels} pixels, "
                f"got {values['height']}x{values['width']}"
            )
        if len(prompts) * count > self.max_images_per_request:
            raise InvalidRequestError(
                f"parameter 'num_images_per_prompt' times the number of prompts must be at most "
                f"{self.max_images_per_request}, got {count} x {len(prompts)}"
            )
        negative = negative * len(prompts) if len(negative) == 1 else negative
        return ImageRequest(
            prompts=[prompt for prompt in prompts for _ in range(count)],
            negative_prompts=[text for text in negative for _ in range(count)],
            height=values["height"],
            width=values["width"],
            num_inference_steps=values["num_inference_steps"],
            guidance_scale=values["guidance_scale"],
            seed=values["seed"],
        )

    def _chunks(self, indices: list[int], checked: list[ImageRequest]) -> list[list[int]]:
        """Consecutive runs of `indices` holding at most `max_images_per_batch` images each
        (a request bigger than that on its own runs alone)."""
        chunks: list[list[int]] = []
        images = 0
        for index in indices:
            count = len(checked[index].prompts)
            if not chunks or images + count > self.max_images_per_batch:
                chunks.append([])
                images = 0
            chunks[-1].append(index)
            images += count
        return chunks

    def _run_group(self, group: list[ImageRequest]) -> list[list[Image.Image]]:
        """One pipeline call for requests sharing a batch key; each request's images.

        Each request gets one CPU generator, passed once per image it asks for: diffusers
        draws image i's initial latents from generator i in order, so a request's noise is
        the same stream whether it runs alone or batched, and on any device.
        """
        generators = [torch.Generator("cpu").manual_seed(request.seed) for request in group]
        first = group[0]
        output = self.pipeline(
            prompt=[prompt for request in group for prompt in request.prompts],
            negative_prompt=[text for request in group for text in request.negative_prompts],
            generator=[gen for request, gen in zip(group, generators) for _ in request.prompts],
            height=first.height,
            width=first.width,
            num_inference_steps=first.num_inference_steps,
            guidance_scale=first.guidance_scale,
            output_type="pil",
        )
        images = iter(output.images)
        return [[next(images) for _ in request.prompts] for request in group]


def flatten_request(request: dict[str, Any]) -> dict[str, Any]:
    """Turn `{"input": prompt or {fields}, "parameters": {fields}}` into one flat field dict."""
    if not isinstance(request, dict):
        raise InvalidRequestError(f"a request must be an object with 'input', got {type(request).__name__}")
    unknown = sorted(set(request) - {"input", "parameters"})
    if unknown:
        raise InvalidRequestError(f"unknown request key {', '.join(map(repr, unknown))}; accepted: input, parameters")
    if "input" not in request:
        raise InvalidRequestError("request 'input' is required")
    inputs, parameters = request["input"], request.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidRequestError(f"request 'parameters' must be an object, got {type(parameters).__name__}")
    fields = dict(inputs) if isinstance(inputs, dict) else {"prompt": inputs}
    both = sorted(set(fields) & set(parameters))
    if both:
        raise InvalidRequestError(f"parameter {', '.join(map(repr, both))} given in both 'input' and 'parameters'")
    return {**fields, **parameters}


def encode_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _fields(max_images: int, max_steps: int) -> list[Field]:
    """The accepted fields, MosaicML's defaults, and the limits that keep a request bounded."""
    return [
        Field("prompt", list, REQUIRED, _PROMPTS),
        Field("negative_prompt", list),
        Field("height", int, 512, _MULTIPLE_OF_8),
        Field("width", int, 512, _MULTIPLE_OF_8),
        # MosaicML's default of 50 steps, unless the operator's limit is lower.
        Field("num_inference_steps", int, min(50, max_steps), in_range(1, max_steps)),
        Field("num_images_per_prompt", int, 1, in_range(1, max_images)),
        Field("guidance_scale", float, 7.5, finite_at_least(0)),
        Field("seed", int, 0, SEED),
    ]


# The VAE downsamples by 8 in Stable Diffusion; diffusers refuses other sizes.
_MULTIPLE_OF_8 = Rule(lambda value: value > 0 and value % 8 == 0, "a positive multiple of 8")
_PROMPTS = Rule(lambda prompts: bool(prompts) and all(prompt.strip() for prompt in prompts),
                "a non-empty string or a list of non-empty strings")
