"""`python -m mosaic_serving.launcher.probe`: a readiness probe for a server run without our
launcher (the Docker image, Compose, the Helm chart).

Triton calls our models ready as soon as `initialize` returns, while their handlers still load
in the background, so `/v2/health/ready` alone says ready too early, and stays ready for a
model whose load failed. This probe also requires every model's load gauge to say loaded.
Exit status 0 when ready, 1 otherwise with the reason on stderr; it imports no torch.
"""

from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.request

from mosaic_serving.launcher.model_loads import load_states
from mosaic_serving.load_state import LoadState


def not_ready_reason(host: str, http_port: int, metrics_port: int) -> str | None:
    """Why the server is not ready yet, or None when it is."""
    try:
        with urllib.request.urlopen(f"http://{host}:{http_port}/v2/health/ready", timeout=5) as response:
            if response.status != 200:
                return f"Triton is not ready (HTTP {response.status})"
    except (urllib.error.URLError, OSError) as error:
        return f"Triton is not ready: {error}"
    pending = {model: state.name.lower() for model, state in load_states(f"{host}:{metrics_port}").items()
               if state != LoadState.LOADED}
    if pending:
        return "handlers not loaded: " + ", ".join(f"{model} ({state})" for model, state in sorted(pending.items()))
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="localhost")
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--metrics-port", type=int, default=8002)
    args = parser.parse_args(argv)
    reason = not_ready_reason(args.host, args.http_port, args.metrics_port)
    if reason is not None:
        print(reason, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
