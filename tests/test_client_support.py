"""Shared helpers for tests/test_client*.py (this module holds no tests).

Cancellation is observed on the server, in `mpt`'s metrics: a client starts a few long
generations (LONG: 8000 tokens, over ten seconds even for the compiled tiny model), leaves
them once each has its first piece, and `mpt_requests_total` must count each as cancelled
(none finished at its length) while `mpt_running_requests` and `mpt_waiting_requests` fall
back to 0. Few streams, so that all have their first piece within milliseconds of each other
and none can finish before the client leaves.
"""

from __future__ import annotations

import io
import re
import socket
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

from mosaic_serving.launcher.server import free_port
from reliability import mpt_ended, mpt_in_engine, mpt_running, settles, wait_for

PROTOCOLS = ("grpc", "http")
PROMPT = "Hello world"
GREEDY = {"do_sample": False}
STREAMS = 4  # long streams a cancellation test starts and leaves
# long enough that no request ends by itself while a test leaves it, even when the test's process
# stalls a second or two (the tiny MPT's context is 8192); min_new_tokens rules out an early end.
LONG = {"max_new_tokens": 8000, "min_new_tokens": 8000, "do_sample": True, "top_k": 50, "seed": 1}
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


class EngineWatch:
    """What `mpt`'s engine does with the requests a client leaves, from the server's metrics.

    Create it before the requests start (and while no other request runs)."""

    def __init__(self, server):
        self.server = server
        self.before = mpt_ended(server)

    def assert_running(self, count: int) -> None:
        """`count` requests decode together. Polled: the engine reports its load after the step
        that sent the first pieces, so a client can see its last first piece before that."""
        settles(lambda: mpt_running(self.server), count, timeout=10)

    def assert_cancelled(self, count: int) -> None:
        """`count` requests ended as cancelled, none at its length, and the engine is empty."""
        self._assert_ended(cancelled=count, finished=0)

    def _assert_ended(self, cancelled: int, finished: int) -> None:
        wait_for(lambda: mpt_in_engine(self.server) == 0
                 and sum(mpt_ended(self.server)) - sum(self.before) >= cancelled + finished, timeout=60)
        ended = tuple(now - then for now, then in zip(mpt_ended(self.server), self.before))
        assert ended == (cancelled, finished), f"(cancelled, finished) = {ended}, expected {(cancelled, finished)}"


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
