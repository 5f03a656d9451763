"""A thin client for the mosaic-serving models on Triton: no torch, transformers or diffusers.

    from mosaic_client import Client
    with Client("localhost:8001") as client:
        print(client.generate("Hello", max_new_tokens=16).text)
"""

from mosaic_client.aio import AsyncClient
from mosaic_client.calls import Generation, Health, ModelNames
from mosaic_client.errors import (
    BadRequestError,
    ClientError,
    NotFoundError,
    RequestTimeoutError,
    ServerError,
    ServerUnavailableError,
)
from mosaic_client.sync import Client

__all__ = [
    "AsyncClient",
    "BadRequestError",
    "Client",
    "ClientError",
    "Generation",
    "Health",
    "ModelNames",
    "NotFoundError",
    "RequestTimeoutError",
    "ServerError",
    "ServerUnavailableError",
]
