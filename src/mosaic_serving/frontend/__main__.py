"""`python -m mosaic_serving.frontend`: the HTTP frontend (OpenAI and MosaicML APIs) in front
of a Triton server, reached over HTTP (default) or gRPC."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys

import uvicorn

from mosaic_serving.frontend.app import create_app
from mosaic_serving.frontend.chat import FORMATS
from mosaic_serving.frontend.state import API_KEY_VARIABLE, DEFAULT_INSTRUCTION, DEFAULT_TRITON, Settings

log = logging.getLogger("mosaic_serving.frontend")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m mosaic_serving.frontend", description=__doc__)
    parser.add_argument("--triton", default=DEFAULT_TRITON,
                        help="Triton's URL: http://HOST:PORT (its HTTP port, the default) or grpc://HOST:PORT")
    parser.add_argument("--address", default="127.0.0.1",
                        help="interface to listen on (default: localhost only; 0.0.0.0 for all)")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--api-key", default=os.environ.get(API_KEY_VARIABLE) or None,
                        help=f"require this key (Authorization: Bearer KEY); default: ${API_KEY_VARIABLE}, else none")
    parser.add_argument("--tokenizer", default=os.environ.get("MPT_MODEL") or None,
                        help="the text model's tokenizer directory (its chat template) or hub id; default: $MPT_MODEL")
    parser.add_argument("--chat-format", choices=FORMATS, default="auto",
                        help="how chat messages become a prompt (auto: the tokenizer's template, else MPT's)")
    parser.add_argument("--default-max-tokens", type=int, default=Settings.default_max_tokens,
                        help="new tokens for a chat completion that names no max_tokens")
    parser.add_argument("--max-n", type=int, default=Settings.max_n, help="most choices (n x prompts) a request")
    parser.add_argument("--default-instruction", default=DEFAULT_INSTRUCTION,
                        help="INSTRUCTOR instruction for embeddings that give none")
    parser.add_argument("--timeout", type=float, default=Settings.timeout_s,
                        help="seconds to wait for Triton's answer or a stream's next piece")
    parser.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--access-log", action="store_true", help="log every request (costs time per request)")
    return parser.parse_args(argv)


def is_local(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return address == "localhost"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    if not args.api_key and not is_local(args.address):
        log.warning("listening on %s without an API key: anyone who reaches it can use the models "
                    "(set --api-key or $%s)", args.address, API_KEY_VARIABLE)
    settings = Settings(triton=args.triton, api_key=args.api_key, tokenizer=args.tokenizer,
                        chat_format=args.chat_format, default_max_tokens=args.default_max_tokens,
                        max_n=args.max_n, default_instruction=args.default_instruction, timeout_s=args.timeout)
    try:
        app = create_app(settings)
    except ValueError as error:  # a chat format that cannot be had, a Triton URL without its protocol
        print(f"error: {error}", file=sys.stderr)
        return 2
    uvicorn.run(app, host=args.address, port=args.port, log_level=args.log_level, access_log=args.access_log,
                loop="auto", http="auto", timeout_graceful_shutdown=5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
