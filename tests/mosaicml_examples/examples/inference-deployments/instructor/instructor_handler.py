# Copyright 2022 MosaicML Examples authors
# SPDX-License-Identifier: Apache-2.0
# CPU equivalent of MosaicML's instructor_handler.py: the same class and shapes; INSTRUCTOR
# (InstructorEmbedding, which needs transformers 4) is a stand-in with the same pooling.
from typing import Dict, List

from mosaic_serving.handlers.instructor import HFInstructorHandler as _Pooling


class INSTRUCTOR():
    """Stand-in for InstructorEmbedding.INSTRUCTOR: encode([[instruction, text], ...])."""

    def __init__(self, model_name: str):
        self.model_name = model_name
        self.device = 'cpu'

    def to(self, device):
        self.device = device
        self.pooling = _Pooling(self.model_name, device=self.device)
        return self

    def encode(self, pairs):
        return self.pooling.embed([tuple(pair) for pair in pairs])


class HFInstructorHandler():
    """Custom Hugging Face Instructor Model handler class."""

    MODEL_NAME = ''

    def __init__(self, model_name: str):
        self.device = 'cpu'  # MosaicML's: torch.cuda.current_device()
        self.model_name = model_name

        self.model = INSTRUCTOR(self.model_name)
        self.model.to(self.device)

    def predict(self, model_requests: List[Dict]):
        """Runs a forward pass with the given inputs.

        Model request format: {"input": ["<instruction>", "<sentence>"]}
        """
        input_list = []
        for req in model_requests:
            if 'input' not in req:
                raise KeyError('input key not in model_requests')
            input_list.append(req['input'])

        embeddings = self.model.encode(input_list)
        return embeddings.tolist()
