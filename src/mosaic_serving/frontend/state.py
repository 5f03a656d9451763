"""What every route shares: the settings, the Triton client and the model catalog."""

from __future__ import annotations

from dataclasses import dataclass, field

from mosaic_client import AsyncClient
from mosaic_client.aio import server_address

from mosaic_serving.frontend.catalog import Catalog
from mosaic_serving.frontend.chat import ChatFormat, chat_format

DEFAULT_INSTRUCTION = "Represent the sentence:"
API_KEY_VARIABLE = "MOSAIC_FRONTEND_API_KEY"  # the API key, when not on the command line
# HTTP by default: per streamed request the frontend spends less than half the CPU it spends
# over gRPC (grpc.aio's poller thread and call set-up), and Triton less too (README, frontend).
DEFAULT_TRITON = "http://localhost:8000"


def triton_endpoint(url: str) -> tuple[str, str]:
    """(protocol, "host:port") of a Triton URL such as http://localhost:8000 or grpc://triton:8001."""
    protocol, separator, address = url.partition("://")
    if not separator or protocol not in ("http", "grpc") or not address.strip("/"):
        raise ValueError(f"Triton's URL must be http://HOST:PORT or grpc://HOST:PORT, got {url!r}")
    return protocol, server_address(url, protocol)


@dataclass
class Settings:
    """The frontend's options (see `python -m mosaic_serving.frontend --help`)."""

    triton: str = DEFAULT_TRITON  # Triton's URL; its scheme (http, grpc) is the protocol used
    api_key: str | None = None
    tokenizer: str | None = None  # the text model's tokenizer (directory or hub id), for chat
    chat_format: str = "auto"
    default_max_tokens: int = 256  # chat completions that name no max_tokens
    max_n: int = 16  # choices per request (n), prompts x n for completions
    default_instruction: str = DEFAULT_INSTRUCTION  # embeddings without an `instruction`
    timeout_s: float = 600.0  # a Triton answer, or the next piece of a stream


@dataclass
class State:
    settings: Settings
    client: AsyncClient = field(init=False)
    catalog: Catalog = field(init=False)
    chat: ChatFormat = field(init=False)

    def __post_init__(self) -> None:
        protocol, address = triton_endpoint(self.settings.triton)
        self.client = AsyncClient(address, protocol, timeout=self.settings.timeout_s, retries=0, max_concurrency=64)
        self.catalog = Catalog(self.client)
        self.chat = chat_format(self.settings.chat_format, self.settings.tokenizer)
