"""MosaicML-style model handlers: plain classes with `predict` (and `predict_stream`).

Importing a handler class from here is cheap; each module imports its heavy libraries.
"""

from mosaic_serving.handlers.diffusion import StableDiffusionHandler
from mosaic_serving.handlers.instructor import HFInstructorHandler
from mosaic_serving.handlers.mpt import MPTModelHandler

__all__ = ["HFInstructorHandler", "MPTModelHandler", "StableDiffusionHandler"]
