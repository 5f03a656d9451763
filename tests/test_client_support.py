"""Shared helpers for tests/test_client*.py (this module holds no tests).

Cancellation is observed on the server: the `mpt` engine decodes at most MPT_MAX_BATCH_SIZE
rows at once (32 by default; the test server inherits our environment). We start that many
long generations, leave them early, then time a short probe request. If the server kept
generating for requests its client left, every slot stays taken and the probe waits seconds
for one to free up (~5 s here); if it cancelled them, the probe is admitted at once (~20 ms).
"""

from __future__ import annotations

import io
import os
import re
import socket
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

from mosaic_client import Client
from mosaic_serving.launcher.server import free_port

PROTOCOLS = ("grpc", "http")
PROMPT = "Hello world"
GREEDY = {"do_sample": False}
ENGINE_SLOTS = int(os.environ.get("MPT_MAX_BATCH_SIZE", "32"))
# ~5 s for a full batch of the tiny model (context 512): sampling rows decode slower than
# greedy ones, and min_new_tokens rules out an early end.
LONG = {"max_new_tokens": 500, "min_new_tokens": 500, "do_sample": True, "top_k": 50, "seed": 1}
README = Path(__file__).resolve().parents[1] / "README.md"


def assert_same_images(got: list[bytes], want: list[bytes]) -> None:
    """PNGs equal up to one level on a few pixels: diffusion kernels round differently when
    the server batches a request with others (see test_diffusion_handler)."""
    assert len(got) == len(want)
    for png, expected in zip(got, want):
        difference = np.abs(_pixels(png) - _pixels(expected))
        assert difference.max() <= 1 and (difference > 0).mean() < 0.05


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)), dtype=np.int16)


def url_for(server, protocol: str) -> str:
    return server.grpc_url if protocol == "grpc" else server.http_url


def closed_url() -> str:
    """An address where nothing listens (the small race with other programs is accepted)."""
    return f"localhost:{free_port()}"


class EngineProbe:
    """Times a 2-token generation, which is long only while the engine's batch is full.

    The limit is 10 x the fastest of 3 probes at creation (the engine must be free then), at
    least 2 s, so that one slow probe on a loaded machine does not skew it. Probe while the client that left
    the streams is still open: closing it closes its connections, which cancels anyway.
    """

    def __init__(self, url: str, protocol: str):
        self.url, self.protocol = url, protocol
        self.limit = max(2.0, 10 * min(self.seconds() for _ in range(3)))

    def seconds(self) -> float:
        with Client(self.url, self.protocol, timeout=120) as probe:
            began = time.monotonic()
            assert probe.generate("abc", max_new_tokens=2, **GREEDY).num_output_tokens == 2
            return time.monotonic() - began

    def assert_free(self) -> None:
        seconds = self.seconds()
        assert seconds < self.limit, f"a 2-token request took {seconds:.2f} s: left streams still generate"

    def assert_full(self) -> None:
        seconds = self.seconds()
        assert seconds > self.limit, f"a 2-token request took {seconds:.2f} s: the engine had a free slot"


class FlakyProxy:
    """A TCP proxy to `target` that closes every connection at once until `fail_for` seconds
    have passed, then forwards; `connections` counts the connections it accepted."""

    def __init__(self, target: str, fail_for: float = float("inf")):
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.open_at = time.monotonic() + fail_for
        self.connections = 0
        self.sockets: list[socket.socket] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return  # closed
            self.connections += 1
            if time.monotonic() < self.open_at:
                connection.close()
                continue
            upstream = socket.create_connection(self.target)
            self.sockets += [connection, upstream]
            for source, sink in ((connection, upstream), (upstream, connection)):
                threading.Thread(target=_pump, args=(source, sink), daemon=True).start()

    def close(self) -> None:
        """Stop accepting and drop every forwarded connection (the server waits for open
        connections when it shuts down)."""
        self.listener.close()
        for end in self.sockets:
            _shut(end)


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        _shut(source)
        _shut(sink)


def _shut(end: socket.socket) -> None:
    try:
        end.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def readme_client_blocks(language: str) -> list[str]:
    """The ```language blocks of README.md's "## Client" section."""
    section = README.read_text().split("\n## Client\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{language}\n(.*?)```", section, flags=re.DOTALL)


def for_test_server(example: str, server) -> str:
    """A README example with the test server's ports, and small images: the tiny model takes
    minutes at 512 x 512 on a CPU."""
    substitutions = {
        "localhost:8001": server.grpc_url,
        "localhost:8000": server.http_url,
        "height=512, width=512, num_inference_steps=30": "height=64, width=64, num_inference_steps=2",
        "--steps 30": "--steps 2 --height 64 --width 64",
    }
    for old, new in substitutions.items():
        example = example.replace(old, new)
    return example
