"""What every route shares: the settings, the Triton client and the model catalog."""

from __future__ import annotations

from dataclasses import dataclass, field

from mosaic_client import AsyncClient

from mosaic_serving.frontend.catalog import Catalog
from mosaic_serving.frontend.chat import ChatFormat, chat_format

DEFAULT_INSTRUCTION = "Represent the sentence:"
API_KEY_VARIABLE = "MOSAIC_FRONTEND_API_KEY"  # the API key, when not on the command line


@dataclass
class Settings:
    """The frontend's options (see `python -m mosaic_serving.frontend --help`)."""

    triton_grpc: str = "localhost:8001"
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
        self.client = AsyncClient(self.settings.triton_grpc, "grpc", timeout=self.settings.timeout_s, retries=0,
                                  max_concurrency=64)
        self.catalog = Catalog(self.client)
        self.chat = chat_format(self.settings.chat_format, self.settings.tokenizer)
