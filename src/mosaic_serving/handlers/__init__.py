"""MosaicML-style model handlers: plain classes with `predict` (and `predict_stream`).

Classes are imported on first use, so that importing one handler does not pull in the
libraries of the others (diffusers is slow to import).
"""

import importlib

_HANDLERS = {
    "MPTModelHandler": "mosaic_serving.handlers.mpt",
    "HFInstructorHandler": "mosaic_serving.handlers.instructor",
    "StableDiffusionHandler": "mosaic_serving.handlers.diffusion",
}

__all__ = sorted(_HANDLERS)


def __getattr__(name: str):
    if name not in _HANDLERS:
        raise AttributeError(name)
    return getattr(importlib.import_module(_HANDLERS[name]), name)
