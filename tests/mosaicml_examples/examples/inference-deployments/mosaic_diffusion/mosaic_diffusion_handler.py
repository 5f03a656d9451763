# Copyright 2022 MosaicML Examples authors
# SPDX-License-Identifier: Apache-2.0
# CPU equivalent of MosaicML's mosaic_diffusion_handler.py: the same class, the same
# `predict(self, **inputs)` and base64 PNG bytes out. The checkpoint is a local diffusers
# pipeline named by DIFFUSION_CHECKPOINT (MosaicML's downloaded its own to /tmp/model.pt).

"""Inference endpoint for Stable Diffusion."""
import base64
import io
import os
from typing import Any, Dict

import torch
from diffusers import StableDiffusionPipeline
from PIL import Image

LOCAL_CHECKPOINT_PATH = os.environ.get('DIFFUSION_CHECKPOINT', '/tmp/model')


class StableDiffusionHandler():
    """Inference endpoint class for Stable Diffusion."""

    def __init__(self):
        self.device = 'cpu'  # MosaicML's: torch.cuda.current_device()
        model = StableDiffusionPipeline.from_pretrained(LOCAL_CHECKPOINT_PATH)
        model.set_progress_bar_config(disable=True)
        self.model = model.to(self.device)

    def predict(self, **inputs: Dict[str, Any]):
        if 'prompt' not in inputs:
            print('No prompt provided, returning nothing')
            return

        # Parse and cast args
        kwargs = {}
        for arg in ['prompt', 'negative_prompt']:
            if arg in inputs:
                kwargs[arg] = inputs[arg]
        for arg in [
                'height', 'width', 'num_inference_steps',
                'num_images_per_prompt', 'seed'
        ]:
            if arg in inputs:
                kwargs[arg] = int(inputs[arg])  # type: ignore
        for arg in ['guidance_scale']:
            if arg in inputs:
                kwargs[arg] = float(inputs[arg])  # type: ignore

        prompt = kwargs.pop('prompt')
        prompts = [prompt] if isinstance(prompt, str) else prompt

        # Generate images (MosaicML's model.generate takes `seed`; diffusers a generator)
        generator = torch.Generator().manual_seed(kwargs.pop('seed', 0))
        imgs = self.model(prompt=prompts, generator=generator, output_type='pt', **kwargs).images

        # Send as bytes
        png_images = []
        for i in range(imgs.shape[0]):
            img = (imgs[i].permute(1, 2, 0).numpy() *
                   255).round().astype('uint8')
            pil_image = Image.fromarray(img, 'RGB')
            img_byte_arr = io.BytesIO()
            pil_image.save(img_byte_arr, format='PNG')
            base64_encoded_image = base64.b64encode(
                img_byte_arr.getvalue()).decode('utf-8')
            png_images.append(bytes(base64_encoded_image, 'utf-8'))
        return png_images
