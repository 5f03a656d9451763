"""The `instructor` Triton model: [instruction, text] rows to normalised embeddings.

Dynamic batching hands several requests to one `execute`; all their rows are embedded in
one stacked forward pass (see BatchedModel).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from mosaic_serving.handlers.instructor import HFInstructorHandler
from mosaic_serving.params import REQUIRED, Field
from mosaic_serving.triton.adapter import BatchedModel


class TritonPythonModel(BatchedModel):
    inputs = [Field("instruction", str, ""), Field("text", str, REQUIRED)]

    def create_handler(self, kwargs: dict[str, Any]) -> HFInstructorHandler:
        return HFInstructorHandler(**kwargs)

    def run(self, rows: list[dict[str, Any]]) -> list[np.ndarray]:
        return list(self.handler.embed([(row["instruction"], row["text"]) for row in rows]))

    def output_tensors(self, results: list[np.ndarray]) -> list[pb_utils.Tensor]:
        return [pb_utils.Tensor("embedding", np.stack(results).astype(np.float32))]
