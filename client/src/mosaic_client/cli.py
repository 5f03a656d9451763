"""`mosaic-client`: the served models from the shell.

    mosaic-client generate "Once upon a time" --max-new-tokens 32 --stream
    mosaic-client embed "first text" "second text" --instruction "Represent the sentence:"
    mosaic-client image "a lighthouse at dawn" -o lighthouse.png
    mosaic-client health
    mosaic-client predict custom_example '{"inputs": ["to be or not to be"]}'

Common options (before or after the command): --url, --protocol, --timeout, --json (one JSON
document, or one JSON line per streamed piece, on stdout for scripts). Defaults come from
MOSAIC_CLIENT_URL and MOSAIC_CLIENT_PROTOCOL. Exit status: 0 ok, 1 error (message on stderr),
2 bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

from mosaic_client.aio import AsyncClient
from mosaic_client.calls import Health
from mosaic_client.errors import ClientError

Command = Callable[[AsyncClient, argparse.Namespace], Awaitable[int]]


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return asyncio.run(_run(args))
    except ClientError as error:
        print(f"error: {type(error).__name__}: {error.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `| head`: stop quietly, as shell tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


async def _run(args: argparse.Namespace) -> int:
    async with AsyncClient(args.url, args.protocol, timeout=args.timeout) as client:
        return await args.command(client, args)


# ---- commands ------------------------------------------------------------------------------


async def generate(client: AsyncClient, args: argparse.Namespace) -> int:
    params = _generate_params(args)
    if not args.stream:
        result = await client.generate(args.prompt, **params)
        _print(asdict(result) if args.json else result.text, args.json)
        return 0
    async for piece in client.stream(args.prompt, **params):
        print(json.dumps({"text": piece}) if args.json else piece, end="\n" if args.json else "", flush=True)
    if not args.json:
        print()
    return 0


async def embed(client: AsyncClient, args: argparse.Namespace) -> int:
    embeddings = await client.embed(args.texts, instruction=args.instruction)
    if args.json:
        _print({"embeddings": embeddings.tolist()}, True)
    else:
        for row in embeddings:
            print(" ".join(f"{value:.6g}" for value in row))
    return 0


async def image(client: AsyncClient, args: argparse.Namespace) -> int:
    params = {name: getattr(args, name) for name in _IMAGE_OPTIONS if getattr(args, name) is not None}
    async with _progress(f"generating {args.num_images_per_prompt or 1} image(s)"):
        pngs = await client.generate_images(args.prompt, **params)
    paths = _image_paths(args.output, len(pngs))
    for path, png in zip(paths, pngs):
        path.write_bytes(png)
    _print({"files": [str(path) for path in paths]} if args.json else "\n".join(map(str, paths)), args.json)
    return 0


async def health(client: AsyncClient, args: argparse.Namespace) -> int:
    try:
        state, error = await client.health(), None
    except ClientError as caught:
        state, error = Health(live=False, ready=False), caught.message
    if args.json:
        _print({"url": client.url, "protocol": client.protocol, **asdict(state), "error": error}, True)
    else:
        print(f"server {client.url} ({client.protocol}): {_word(state.live, 'live')}, {_word(state.ready, 'ready')}")
        for name, ready in sorted(state.models.items()):
            print(f"  {name:<24} {_word(ready, 'ready')}")
        if error:
            print(f"error: {error}", file=sys.stderr)
    return 0 if state.live and state.ready else 1


async def predict(client: AsyncClient, args: argparse.Namespace) -> int:
    text = sys.stdin.read() if args.request == "-" else args.request
    try:
        request = json.loads(text)
        inputs, parameters = request["inputs"], request.get("parameters")
    except (ValueError, KeyError, TypeError) as error:
        raise ClientError(f'REQUEST must be JSON {{"inputs": [...], "parameters": {{...}}}}: {error}') from None
    outputs = await client.predict(args.model, inputs, parameters)
    _print({"outputs": outputs}, True)
    return 0


# ---- helpers ---------------------------------------------------------------------------------

_GENERATE_OPTIONS = ("max_new_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "seed", "stop")
_IMAGE_OPTIONS = ("negative_prompt", "height", "width", "num_inference_steps", "num_images_per_prompt",
                  "guidance_scale", "seed")


def _generate_params(args: argparse.Namespace) -> dict[str, Any]:
    params = {name: getattr(args, name) for name in _GENERATE_OPTIONS if getattr(args, name) is not None}
    if args.greedy:
        params["do_sample"] = False
    for item in args.param:
        key, _, value = item.partition("=")
        params[key] = _json_or_text(value)
    return params


def _json_or_text(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value


def _image_paths(output: Path, count: int) -> list[Path]:
    """`output` for one image; out-1.png, out-2.png, ... for several."""
    if count == 1:
        return [output]
    return [output.with_name(f"{output.stem}-{index}{output.suffix}") for index in range(1, count + 1)]


@contextlib.asynccontextmanager
async def _progress(label: str) -> AsyncIterator[None]:
    """Elapsed seconds on stderr while waiting: updated in place on a terminal, else two lines."""
    began, tty = time.monotonic(), sys.stderr.isatty()
    print(f"{label}...", end="" if tty else "\n", file=sys.stderr, flush=True)

    async def tick() -> None:
        while True:
            await asyncio.sleep(0.2)
            print(f"\r{label}... {time.monotonic() - began:.1f} s", end="", file=sys.stderr, flush=True)

    ticker = asyncio.ensure_future(tick()) if tty else None
    try:
        yield
    finally:
        if ticker is not None:
            ticker.cancel()
        print(f"{chr(13) if tty else ''}{label}: {time.monotonic() - began:.1f} s", file=sys.stderr, flush=True)


def _print(value: Any, as_json: bool) -> None:
    print(json.dumps(value, default=_bytes_as_base64) if as_json else value)


def _bytes_as_base64(value: Any) -> str:
    """PNG bytes in JSON output (predict on diffusion), as MosaicML's API sends images."""
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _word(flag: bool, word: str) -> str:
    return word if flag else f"NOT {word}"


# ---- argument parsing -----------------------------------------------------------------------


def _common_options(parser: argparse.ArgumentParser, top: bool) -> None:
    """--url/--protocol/--timeout/--json, accepted before and after the command: defaults
    are set once, on the top-level parser, so a subcommand's copy only overrides them."""
    def default(value: Any) -> Any:
        return value if top else argparse.SUPPRESS

    parser.add_argument("--url", default=default(os.environ.get("MOSAIC_CLIENT_URL")),
                        help="server host:port (default: localhost:8001 for gRPC, localhost:8000 for HTTP)")
    parser.add_argument("--protocol", choices=("grpc", "http"),
                        default=default(os.environ.get("MOSAIC_CLIENT_PROTOCOL", "grpc")))
    parser.add_argument("--timeout", type=float, default=default(120.0), help="seconds (default 120)")
    parser.add_argument("--json", action="store_true", default=default(False), help="JSON output for scripts")


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="mosaic-client", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    _common_options(root, top=True)
    commands = root.add_subparsers(title="commands", required=True, metavar="COMMAND")

    def command(name: str, function: Command, help_: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_, description=help_)
        _common_options(sub, top=False)
        sub.set_defaults(command=function)
        return sub

    sub = command("generate", generate, "generate text with mpt")
    sub.add_argument("prompt")
    sub.add_argument("--stream", action="store_true", help="print the text as it is generated")
    sub.add_argument("--max-new-tokens", type=int)
    sub.add_argument("--temperature", type=float)
    sub.add_argument("--top-p", type=float)
    sub.add_argument("--top-k", type=int)
    sub.add_argument("--repetition-penalty", type=float)
    sub.add_argument("--seed", type=int)
    sub.add_argument("--stop", action="append", help="a stop string (repeatable)")
    sub.add_argument("--greedy", action="store_true", help="do_sample=false")
    sub.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                     help="any generate kwarg; VALUE is JSON or a string (repeatable)")

    sub = command("embed", embed, "embed texts with instructor (one line of numbers per text)")
    sub.add_argument("texts", nargs="+")
    sub.add_argument("--instruction", default="", help='e.g. "Represent the sentence:"')

    sub = command("image", image, "generate images with diffusion")
    sub.add_argument("prompt")
    sub.add_argument("-o", "--output", type=Path, required=True, help="PNG file (out-1.png, ... for several)")
    sub.add_argument("--negative-prompt")
    sub.add_argument("--height", type=int)
    sub.add_argument("--width", type=int)
    sub.add_argument("--steps", dest="num_inference_steps", type=int)
    sub.add_argument("--num-images", dest="num_images_per_prompt", type=int)
    sub.add_argument("--guidance-scale", type=float)
    sub.add_argument("--seed", type=int)

    command("health", health, "server liveness and readiness, and each model's readiness")

    sub = command("predict", predict, 'a MosaicML request {"inputs": [...], "parameters": {...}} (JSON output)')
    sub.add_argument("model")
    sub.add_argument("request", help="the request as JSON, or - to read it from stdin")
    return root


if __name__ == "__main__":
    sys.exit(main())
