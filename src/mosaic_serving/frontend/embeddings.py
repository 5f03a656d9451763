"""POST /v1/embeddings on an embedding model (`instructor`).

`input` is a string or an array of strings; INSTRUCTOR embeds each text under an
instruction, given by the extra field `instruction` (default "Represent the sentence:").
`encoding_format` "float" (lists of numbers) or "base64" (little-endian float32 bytes, what
the `openai` client asks for by default and decodes). Token counts are not reported by the
model, so `usage` says 0.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
from mosaic_client import ClientError

from mosaic_serving.frontend.body import ANY_VALUE, Body
from mosaic_serving.frontend.catalog import Kind
from mosaic_serving.frontend.errors import bad_request, from_client_error
from mosaic_serving.frontend.state import State
from mosaic_serving.params import Rule

_ENCODINGS = Rule(lambda encoding: encoding in ("float", "base64"), "'float' or 'base64'")


async def embeddings(state: State, body: Body) -> dict[str, Any]:
    model = body.take("model", str, required=True)
    items = body.take("input", (str, list), required=True)
    texts = [items] if isinstance(items, str) else items
    if not texts or not all(isinstance(text, str) for text in texts):
        raise bad_request("'input' must be a string or a non-empty array of strings (token arrays are not "
                          "supported)", "input")
    instruction = body.take("instruction", str, state.settings.default_instruction)
    encoding = body.take("encoding_format", str, "float", rule=_ENCODINGS)
    body.finish({"user": ANY_VALUE})
    await state.catalog.get(model, Kind.EMBEDDING)
    try:
        vectors = await state.client.embed(texts, instruction, model=model)
    except ClientError as error:
        raise from_client_error(error) from error
    data = [{"object": "embedding", "index": index, "embedding": _encoded(vector, encoding)}
            for index, vector in enumerate(vectors)]
    return {"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": 0, "total_tokens": 0}}


def _encoded(vector: np.ndarray, encoding: str) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode()
    return vector.tolist()
