"""The `instructor` Triton model: [instruction, text] rows to normalised embeddings.

Dynamic batching hands several requests to one `execute`; their rows are embedded in
stacked forward passes of at most the handler's `max_batch_size` rows (see BatchedModel).
Limits: rows per request (Triton's `max_batch_size`), tokens per text (`max_seq_length`) and
bytes per request (`max_request_bytes`), each refused with INVALID_ARGUMENT.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import triton_python_backend_utils as pb_utils

from mosaic_serving.params import REQUIRED
from mosaic_serving.triton.adapter import BatchedModel
from mosaic_serving.triton.contract import TensorField, TensorSpec

if TYPE_CHECKING:  # imports torch: on the load thread only (see triton.loading)
    from mosaic_serving.handlers.instructor import HFInstructorHandler


class TritonPythonModel(BatchedModel):
    inputs = [TensorField("instruction", str, ""), TensorField("text", str, REQUIRED)]
    outputs = [TensorSpec("embedding", "TYPE_FP32")]

    def create_handler(self, kwargs: dict[str, Any]) -> HFInstructorHandler:
        from mosaic_serving.handlers.instructor import HFInstructorHandler

        return HFInstructorHandler(**kwargs)

    def run(self, rows: list[dict[str, Any]]) -> list[np.ndarray]:
        pairs = [(row["instruction"], row["text"]) for row in rows]
        size = self.handler.max_batch_size
        chunks = (self.handler.embed(pairs[start : start + size]) for start in range(0, len(pairs), size))
        return [vector for chunk in chunks for vector in chunk]

    def output_tensors(self, results: list[np.ndarray]) -> list[pb_utils.Tensor]:
        return [pb_utils.Tensor("embedding", np.stack(results).astype(np.float32))]
