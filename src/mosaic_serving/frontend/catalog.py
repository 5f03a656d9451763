"""Which served model does what, learned from Triton: a model's kind follows from its tensors.

The contract's tensor names say what a model is, whatever it is called: `text_input` ->
`text_output` is a causal LM (`mpt`), `instruction` + `text` -> `embedding` an embedding
model (`instructor`), `prompt` -> `images` an image model (`diffusion`), `request` ->
`response` a custom handler (streaming when decoupled). So renamed or added models work with
no frontend configuration. Kinds are cached; an unknown name triggers one refresh.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from enum import Enum

from mosaic_client import AsyncClient, ClientError

from mosaic_serving.frontend.errors import APIError, from_client_error, model_not_found


class Kind(str, Enum):
    TEXT = "text generation"
    EMBEDDING = "embeddings"
    IMAGE = "image generation"
    HANDLER = "custom handler"
    OTHER = "other"


@dataclass(frozen=True)
class ServedModel:
    name: str
    kind: Kind
    ready: bool
    streams: bool  # decoupled: answers a request with several responses


def kind_of(config: dict) -> tuple[Kind, bool]:
    """The kind of a model from its Triton config, and whether it is decoupled."""
    inputs = {tensor["name"] for tensor in config.get("input", [])}
    outputs = {tensor["name"] for tensor in config.get("output", [])}
    decoupled = bool(config.get("model_transaction_policy", {}).get("decoupled", False))
    if "text_input" in inputs and "text_output" in outputs:
        return Kind.TEXT, decoupled
    if {"instruction", "text"} <= inputs and "embedding" in outputs:
        return Kind.EMBEDDING, decoupled
    if "prompt" in inputs and "images" in outputs:
        return Kind.IMAGE, decoupled
    if "request" in inputs and "response" in outputs:
        return Kind.HANDLER, decoupled
    return Kind.OTHER, decoupled


class Catalog:
    """The served models by name, refreshed from Triton at most every `min_refresh_s` seconds
    when a name is unknown or a model is not ready."""

    def __init__(self, client: AsyncClient, min_refresh_s: float = 1.0):
        self.client = client
        self.min_refresh_s = min_refresh_s
        self.models: dict[str, ServedModel] = {}
        self._refreshed = -float("inf")
        self._lock = asyncio.Lock()

    async def refresh(self) -> dict[str, ServedModel]:
        async with self._lock:
            try:
                health = await self.client.health()
                models = {}
                for name, ready in health.models.items():
                    kind, streams = Kind.OTHER, False
                    if ready:
                        kind, streams = kind_of(await self.client.model_config(name))
                    models[name] = ServedModel(name, kind, ready, streams)
            except ClientError as error:
                raise from_client_error(error) from error
            self.models = models
            self._refreshed = time.monotonic()
            return models

    async def get(self, name: str, kind: Kind | None = None) -> ServedModel:
        """The ready model `name` (of `kind` when given): 404 unknown, 503 not ready, 400 wrong kind."""
        model = self.models.get(name)
        if (model is None or not model.ready) and time.monotonic() - self._refreshed >= self.min_refresh_s:
            model = (await self.refresh()).get(name)
        if model is None:
            raise model_not_found(name)
        if not model.ready:
            raise APIError(503, f"The model '{name}' is not ready", code="model_not_ready")
        if kind is not None and model.kind is not kind:
            raise APIError(400, f"The model '{name}' does not do {kind.value} (it does {model.kind.value}); "
                           f"models that do: {', '.join(self.names(kind)) or 'none'}", param="model")
        return model

    def names(self, kind: Kind) -> list[str]:
        return sorted(name for name, model in self.models.items() if model.kind is kind and model.ready)

    async def only(self, kind: Kind) -> ServedModel:
        """The one ready model of `kind`, for requests that name none (image generation)."""
        if not self.names(kind):
            await self.refresh()
        names = self.names(kind)
        if len(names) != 1:
            raise APIError(400, f"Name a model for {kind.value}: one of {', '.join(names) or 'none served'}",
                           param="model")
        return self.models[names[0]]
