"""`./scripts/serve`: serve the model repository on a real Triton server until Ctrl-C, with the
HTTP frontend (OpenAI's API and MosaicML's predict API, port 9000) beside it.

By default the configs point at tiny models built here in seconds (CPU demo, tests); with
`--real` they keep their defaults (hub ids or whatever MPT_MODEL, INSTRUCTOR_MODEL and
DIFFUSION_MODEL say), for a GPU host.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

from mosaic_serving.repository import default_model_repository
from mosaic_serving.tiny_models import tiny_model_path
from mosaic_serving.launcher.server import LocalTritonServer, PortInUseError, ServerStartError

ALL_MODELS = ("mpt", "instructor", "diffusion", "custom_example")
EXIT_PORT_IN_USE = 2  # the exit status when a port is taken (1: any other failed start)
TINY_MODEL_VARIABLES = {"MPT_MODEL": "mpt", "INSTRUCTOR_MODEL": "instructor", "DIFFUSION_MODEL": "diffusion"}


def tiny_model_env(environ=os.environ) -> dict[str, str]:
    """Point each model at its tiny model, unless the environment already names weights."""
    return {
        variable: str(tiny_model_path(name))
        for variable, name in TINY_MODEL_VARIABLES.items()
        if not environ.get(variable)
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-repository", type=Path, default=default_model_repository())
    parser.add_argument("--models", nargs="+", default=list(ALL_MODELS), help="models to load (default: all)")
    parser.add_argument("--real", action="store_true", help="serve the configured real weights, not tiny models")
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--log-file", type=Path, default=None)
    parser.add_argument("--frontend-port", type=int, default=9000, help="the HTTP frontend's port (OpenAI, MosaicML)")
    parser.add_argument("--no-frontend", action="store_true", help="serve Triton's own endpoints only")
    parser.add_argument("--address", default="127.0.0.1",
                        help="interface the ports listen on (default: localhost only; 0.0.0.0 for all)")
    parser.add_argument(
        "--production",
        action="store_true",
        help="refuse model load/unload/index requests from clients (the repository API needs a key only this "
        "process knows; it still reloads a model whose backend process died)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    server = LocalTritonServer(
        args.model_repository,
        models=args.models,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        env={} if args.real else tiny_model_env(),
        log_file=args.log_file,
        startup_timeout=1800 if args.real else 300,
        lock_model_control=args.production,
        address=args.address,
    )
    try:
        server.start()
    except PortInUseError as error:
        print(error, file=sys.stderr)
        return EXIT_PORT_IN_USE
    except ServerStartError as error:
        print(error, file=sys.stderr)
        return 1
    frontend = None
    if not args.no_frontend:  # imported here: serve.py works without the frontend's extra installed
        from mosaic_serving.frontend.process import FrontendPortInUseError, FrontendProcess, FrontendStartError

        model_env = {**os.environ, **({} if args.real else tiny_model_env())}
        tokenizer = ["--tokenizer", model_env["MPT_MODEL"]] if model_env.get("MPT_MODEL") else []
        frontend = FrontendProcess(f"http://{server.http_url}", args.frontend_port, args.address, args=tokenizer)
        try:
            frontend.start()
        except FrontendStartError as error:
            server.stop()
            print(error, file=sys.stderr)
            return EXIT_PORT_IN_USE if isinstance(error, FrontendPortInUseError) else 1
    print(f"Triton is serving {', '.join(args.models)} ({server.startup_seconds:.1f} s to ready; log: {server.log_file})")
    print(f"  HTTP     http://{server.http_url}\n  gRPC     {server.grpc_url}\n  metrics  http://{server.metrics_url}/metrics")
    if frontend is not None:
        print(f"  OpenAI   {frontend.url}/v1  MosaicML {frontend.url}/<model>/predict  (log: {frontend.log_file})")
    print("Ctrl-C stops it.", flush=True)
    try:
        while not stop.wait(0.5):
            if server.process.poll() is not None:
                print(f"tritonserver exited:\n{server.log_tail()}", file=sys.stderr)
                return 1
            if frontend is not None and frontend.process.poll() is not None:
                print(f"the frontend exited:\n{frontend.log_tail()}", file=sys.stderr)
                return 1
    finally:
        if frontend is not None:
            frontend.stop()
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
