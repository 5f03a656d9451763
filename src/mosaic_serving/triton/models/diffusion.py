"""The `diffusion` Triton model: prompts to PNG images.

Dynamic batching hands several requests to one `execute`; the handler runs requests with
the same size, steps and guidance as one pipeline call, each with its own seed.
Metrics: `diffusion_images_total`, and the batch metrics of every batched model (adapter).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import triton_python_backend_utils as pb_utils

from mosaic_serving.errors import InvalidRequestError
from mosaic_serving.params import REQUIRED
from mosaic_serving.triton.adapter import BatchedModel
from mosaic_serving.triton.contract import TensorField, TensorSpec
from mosaic_serving.triton.metrics import best_effort
from mosaic_serving.triton.tensors import string_tensor

if TYPE_CHECKING:  # imports torch and diffusers: on the load thread only (see triton.loading)
    from mosaic_serving.handlers.diffusion import StableDiffusionHandler


class TritonPythonModel(BatchedModel):
    inputs = [
        TensorField("prompt", str, REQUIRED),
        TensorField("negative_prompt", str),
        TensorField("height", int),
        TensorField("width", int),
        TensorField("num_inference_steps", int),
        TensorField("num_images_per_prompt", int),
        TensorField("guidance_scale", float),
        TensorField("seed", int, data_type="TYPE_INT64"),
    ]
    outputs = [TensorSpec("images", "TYPE_STRING")]

    def configure(self, kwargs: dict[str, Any]) -> None:
        self.images_generated = self.metrics.counter("diffusion_images_total", "Images generated")

    def create_handler(self, kwargs: dict[str, Any]) -> StableDiffusionHandler:
        from mosaic_serving.handlers.diffusion import StableDiffusionHandler

        return StableDiffusionHandler(**kwargs)

    def run(self, rows: list[dict[str, Any]]) -> list[list[bytes]]:
        images = self.handler.generate(rows)
        best_effort(lambda: self.images_generated.increment(sum(len(row) for row in images)))
        return images

    def output_tensors(self, results: list[list[bytes]]) -> list[pb_utils.Tensor]:
        counts = {len(images) for images in results}
        if len(counts) != 1:
            raise InvalidRequestError("num_images_per_prompt must be the same for every row of one request")
        images = [image for row in results for image in row]
        return [pb_utils.Tensor("images", string_tensor(images, (len(results), counts.pop())))]
