"""POST /v1/images/generations on an image model (`diffusion`).

`prompt`, `n` (images, default 1), `size` ("WIDTHxHEIGHT", multiples of 8; default: the
model's, 512x512), `response_format` "b64_json" (the default here: this server keeps no
files to link to, so "url" is refused). Extras: `seed`, `steps` (denoising steps),
`negative_prompt`, `guidance_scale`. `model` may be left out when one image model is served.
"""

from __future__ import annotations

import base64
import re
import time
from typing import Any

from mosaic_client import ClientError

from mosaic_serving.frontend.body import ANY_VALUE, Body
from mosaic_serving.frontend.catalog import Kind
from mosaic_serving.frontend.errors import bad_request, from_client_error
from mosaic_serving.frontend.state import State
from mosaic_serving.params import NON_EMPTY_TEXT, Rule, at_least

_SIZE = re.compile(r"^(\d+)x(\d+)$")
_B64_JSON = Rule(lambda fmt: fmt == "b64_json", "'b64_json' (no image files are kept to link to)")
NEUTRAL = {"user": ANY_VALUE, "quality": "standard", "style": "vivid"}


def _size(body: Body) -> dict[str, int]:
    size = body.take("size", str)
    if size is None:
        return {}
    match = _SIZE.match(size)
    if not match or int(match[1]) % 8 or int(match[2]) % 8 or not int(match[1]) or not int(match[2]):
        raise bad_request(f"'size' must be WIDTHxHEIGHT in positive multiples of 8, e.g. 512x512, got {size!r}",
                          "size")
    return {"width": int(match[1]), "height": int(match[2])}


async def generations(state: State, body: Body) -> dict[str, Any]:
    model = body.take("model", str)
    prompt = body.take("prompt", str, required=True, rule=NON_EMPTY_TEXT)
    fields: dict[str, Any] = {"num_images_per_prompt": body.take("n", int, 1, rule=at_least(1))}
    fields.update(_size(body))
    body.take("response_format", str, "b64_json", rule=_B64_JSON)
    for name, target, kind in (("seed", "seed", int), ("steps", "num_inference_steps", int),
                               ("negative_prompt", "negative_prompt", str),
                               ("guidance_scale", "guidance_scale", float)):
        value = body.take(name, kind)
        if value is not None:
            fields[target] = value
    body.finish(NEUTRAL)
    served = await (state.catalog.get(model, Kind.IMAGE) if model else state.catalog.only(Kind.IMAGE))
    try:
        pngs = await state.client.generate_images(prompt, model=served.name, **fields)
    except ClientError as error:
        raise from_client_error(error) from error
    return {"created": int(time.time()), "data": [{"b64_json": base64.b64encode(png).decode()} for png in pngs]}
