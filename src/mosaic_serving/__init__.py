"""MosaicML-style model handlers and the Triton Python-backend adapter that serves them."""

from mosaic_serving.errors import InvalidRequestError

__all__ = ["InvalidRequestError"]
