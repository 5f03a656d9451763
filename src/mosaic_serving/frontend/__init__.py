"""An HTTP frontend for the served models: OpenAI's API and MosaicML's predict API.

A small ASGI service (Starlette on uvicorn) in front of Triton, which it calls over gRPC
with the `mosaic_client` package. Run it with `python -m mosaic_serving.frontend`, or from
Python with FrontendProcess; `create_app` gives the ASGI application itself.
"""

from mosaic_serving.frontend.app import create_app
from mosaic_serving.frontend.process import FrontendPortInUseError, FrontendProcess, FrontendStartError
from mosaic_serving.frontend.state import Settings

__all__ = ["FrontendPortInUseError", "FrontendProcess", "FrontendStartError", "Settings", "create_app"]
