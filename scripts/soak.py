"""Soak test: thousands of mixed requests against a server this script starts (tiny models).

Mix: whole and streamed generation over gRPC and HTTP, streams cancelled by the client (gRPC
stream cancel, HTTP disconnect), embeddings, images, the custom handler, and bad inputs.
Reports the resident memory (RSS) of the server and of each model's backend process at
checkpoints, every request's outcome (a request with no final answer in time is "lost"),
and the server's own count of finished generations. Exit status 1 when a request was lost
or answered unexpectedly, or when memory grew more than --max-growth percent between the first
checkpoint and the end (the first stretch after the warm-up still fills allocator caches;
the growth from the start is reported too).

    ./scripts/soak --requests 3000 --concurrency 8
"""

from __future__ import annotations

import argparse
import json
import queue
import random
import re
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from mosaic_serving.repository import default_model_repository
from mosaic_serving.serve import ALL_MODELS, tiny_model_env
from mosaic_serving.launcher.procfs import children
from mosaic_serving.launcher.server import LocalTritonServer
from mosaic_serving.launcher.watchdog import stub_model

TIMEOUT = 120.0  # seconds without a final answer: the request is lost


class Lost(Exception):
    """No final response within TIMEOUT."""


# ---- request kinds: each returns "ok", "refused" (bad input, rightly refused) or "cancelled" ----


def grpc_input(name: str, value, datatype: str):
    if datatype == "BYTES":
        array = np.array([value.encode()], dtype=object)
    else:
        array = np.array([value], dtype={"BOOL": bool, "INT32": np.int32, "FP32": np.float32}[datatype])
    tensor = grpcclient.InferInput(name, [1], datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def mpt_inputs(tokens: int, stream: bool, **extra) -> list:
    inputs = [grpc_input("text_input", "Once upon a time", "BYTES"), grpc_input("stream", stream, "BOOL"),
              grpc_input("max_new_tokens", tokens, "INT32"), grpc_input("min_length", tokens, "INT32")]
    return inputs + [grpc_input(name, value, kind) for name, (value, kind) in extra.items()]


def grpc_stream(url: str, model: str, inputs: list, cancel_after: int | None = None) -> str:
    """One request on its own stream; with `cancel_after`, cancel after that many responses."""
    client = grpcclient.InferenceServerClient(url)
    events: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: events.put((result, error)))
    try:
        client.async_stream_infer(model, inputs, enable_empty_final_response=True)
        received = 0
        while True:
            try:
                result, error = events.get(timeout=TIMEOUT)
            except queue.Empty:
                raise Lost(model) from None
            if error is not None:
                return "refused" if _is_client_error(error.message()) else f"error: {error.message()[:80]}"
            received += 1
            if cancel_after is not None and received >= cancel_after:
                client.stop_stream(cancel_requests=True)
                return "cancelled"
            if result.get_response().parameters["triton_final_response"].bool_param:
                return "ok"
    finally:
        client.stop_stream()
        client.close()


def _is_client_error(message: str) -> bool:
    return bool(re.search(r"must be|is required|not valid|unknown|over the limit", message))


def http_json(url: str, path: str, body: dict) -> tuple[int, str]:
    request = urllib.request.Request(f"http://{url}{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except TimeoutError:
        raise Lost(path) from None


def http_generate(url: str, model: str, body: dict, expect: int = 200) -> str:
    status, text = http_json(url, f"/v2/models/{model}/generate", body)
    if status == expect:
        return "ok" if status == 200 else "refused"
    return f"error: HTTP {status} {text[:80]}"


def http_stream(url: str, body: dict) -> str:
    status, text = http_json(url, "/v2/models/mpt/generate_stream", body)
    events = [json.loads(line[5:]) for line in text.splitlines() if line.startswith("data:")]
    if status == 200 and events and events[-1].get("finish_reason") in ("length", "stop"):
        return "ok"
    return f"error: HTTP {status} {text[-80:]}"


def http_disconnect(url: str, after_events: int = 2) -> str:
    body = json.dumps({"text_input": "Once upon a time", "max_new_tokens": 400, "min_length": 400,
                       "stream": True}).encode()
    host, port = url.split(":")
    with socket.create_connection((host, int(port)), timeout=TIMEOUT) as connection:
        connection.sendall(b"POST /v2/models/mpt/generate_stream HTTP/1.1\r\nHost: soak\r\nContent-Type: "
                           b"application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        received = b""
        while received.count(b"data:") < after_events:
            chunk = connection.recv(4096)
            if not chunk:
                return "error: connection closed early"
            received += chunk
    return "cancelled"


def infer(url: str, model: str, fields: dict, transport: str) -> str:
    module = grpcclient if transport == "grpc" else httpclient
    inputs = []
    for name, (value, datatype) in fields.items():
        array = np.array([[value.encode() if isinstance(value, str) else value]],
                         dtype=object if datatype == "BYTES" else np.int32)
        tensor = module.InferInput(name, [1, 1], datatype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    client = module.InferenceServerClient(url)
    try:
        client.infer(model, inputs, **({"client_timeout": TIMEOUT} if transport == "grpc" else {}))
        return "ok"
    except InferenceServerException as error:
        if str(error.status()) in ("StatusCode.INVALID_ARGUMENT", "400"):
            return "refused"
        if "Deadline" in error.message():
            raise Lost(model) from None
        return f"error: {error.status()} {error.message()[:80]}"
    finally:
        client.close()


def request_kinds(server: LocalTritonServer) -> dict[str, tuple[int, Callable[[], str], str]]:
    """Name -> (weight, call, expected outcome)."""
    g, h = server.grpc_url, server.http_url
    image = {"prompt": ("a cat", "BYTES"), "height": (64, "INT32"), "width": (64, "INT32"),
             "num_inference_steps": (2, "INT32")}
    words = {"request": (json.dumps({"input": "to be or not to be"}), "BYTES")}
    return {
        "mpt grpc stream": (12, lambda: grpc_stream(g, "mpt", mpt_inputs(16, True)), "ok"),
        "mpt grpc whole": (8, lambda: grpc_stream(g, "mpt", mpt_inputs(16, False)), "ok"),
        "mpt http generate": (8, lambda: http_generate(h, "mpt", {"text_input": "Hello", "max_new_tokens": 16}), "ok"),
        "mpt http stream": (6, lambda: http_stream(h, {"text_input": "Hello", "max_new_tokens": 16, "stream": True}),
                            "ok"),
        "mpt grpc cancel": (8, lambda: grpc_stream(g, "mpt", mpt_inputs(400, True), cancel_after=2), "cancelled"),
        "mpt http disconnect": (5, lambda: http_disconnect(h), "cancelled"),
        "mpt bad top_p": (4, lambda: grpc_stream(g, "mpt", mpt_inputs(4, False, top_p=(7.0, "FP32"))), "refused"),
        "instructor grpc": (10, lambda: infer(g, "instructor", {"text": ("hello there", "BYTES")}, "grpc"), "ok"),
        "instructor http": (6, lambda: infer(h, "instructor", {"text": ("hello there", "BYTES")}, "http"), "ok"),
        "instructor empty": (3, lambda: infer(g, "instructor", {"text": ("", "BYTES")}, "grpc"), "refused"),
        "diffusion grpc": (5, lambda: infer(g, "diffusion", image, "grpc"), "ok"),
        "diffusion bad size": (2, lambda: infer(h, "diffusion", {**image, "height": (65, "INT32")}, "http"), "refused"),
        "custom stream": (6, lambda: grpc_stream(g, "custom_example", [
            grpc_input("request", words["request"][0], "BYTES"), grpc_input("stream", True, "BOOL")]), "ok"),
        "custom http": (5, lambda: http_generate(h, "custom_example", {"request": words["request"][0]}), "ok"),
        "custom bad json": (2, lambda: http_generate(h, "custom_example", {"request": "{nope"}, 400), "refused"),
    }


# ---- memory and metrics ----------------------------------------------------------------------


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def memory(server: LocalTritonServer) -> dict[str, float]:
    """RSS in MiB of the server and of each model's backend stub."""
    result = {"tritonserver": rss_mib(server.process.pid)}
    for pid, state in children(server.process.pid):
        if state != "Z":
            result[f"stub {stub_model(pid)}"] = rss_mib(pid)
    return result


def mpt_metrics(server: LocalTritonServer) -> dict[str, float]:
    with urllib.request.urlopen(f"http://{server.metrics_url}/metrics", timeout=10) as response:
        text = response.read().decode()
    found = {}
    for line in text.splitlines():
        match = re.match(r'^(mpt_\w+)\{([^}]*)\} (\S+)$', line)
        if match:
            reason = re.search(r'(finish_reason|code)="(\w+)"', match[2])
            found[match[1] + (f"[{reason[2]}]" if reason else "")] = float(match[3])
    return found


# ---- the run ---------------------------------------------------------------------------------


def run(server: LocalTritonServer, count: int, concurrency: int, seed: int, checkpoints: int,
        on_checkpoint: Callable[[int], None]) -> tuple[Counter, Counter, Counter]:
    """Send `count` requests of random kinds; (outcomes, surprises, requests sent per kind)."""
    kinds = request_kinds(server)
    rng = random.Random(seed)
    names = rng.choices(list(kinds), weights=[w for w, _, _ in kinds.values()], k=count)
    outcomes: Counter = Counter()
    surprises: Counter = Counter()
    lock = threading.Lock()
    done = [0]
    every = max(1, count // checkpoints)

    def one(name: str) -> None:
        _, call, expected = kinds[name]
        try:
            outcome = call()
        except Lost:
            outcome = "lost"
        except Exception as error:  # noqa: BLE001 - counted as a surprise
            outcome = f"error: {type(error).__name__}: {str(error)[:80]}"
        with lock:
            outcomes[outcome if outcome in ("ok", "refused", "cancelled", "lost") else "unexpected"] += 1
            if outcome != expected:
                surprises[f"{name}: {outcome}"] += 1
            done[0] += 1
            if done[0] % every == 0:
                on_checkpoint(done[0])

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, names))
    return outcomes, surprises, Counter(names)


def settle(server: LocalTritonServer, timeout: float = 30) -> None:
    """Wait until the engine has no running or waiting request (cancellations finished)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        metrics = mpt_metrics(server)
        if metrics.get("mpt_running_requests", 0) == 0 and metrics.get("mpt_waiting_requests", 0) == 0:
            return
        time.sleep(0.2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--warmup", type=int, default=500, help="requests before the 'before' memory figures")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoints", type=int, default=6, help="memory readings during the run")
    parser.add_argument("--max-growth", type=float, default=5.0, help="allowed RSS growth in percent")
    parser.add_argument("--log-file", type=Path, default=None)
    args = parser.parse_args(argv)

    env = {**tiny_model_env(), "HF_HUB_OFFLINE": "1"}
    with LocalTritonServer(default_model_repository(), models=ALL_MODELS, env=env, log_file=args.log_file) as server:
        print(f"server ready in {server.startup_seconds:.1f} s (log: {server.log_file}); warming up with "
              f"{args.warmup} requests", flush=True)
        run(server, args.warmup, args.concurrency, args.seed + 1, 1, lambda _: None)
        settle(server)
        before, metrics_before = memory(server), mpt_metrics(server)
        readings = [("before", before)]
        began = time.monotonic()

        def checkpoint(done: int) -> None:
            readings.append((str(done), memory(server)))
            print(f"  {done} requests, {time.monotonic() - began:.0f} s", flush=True)

        outcomes, surprises, sent = run(server, args.requests, args.concurrency, args.seed, args.checkpoints,
                                        checkpoint)
        seconds = time.monotonic() - began
        settle(server)
        after, metrics_after = memory(server), mpt_metrics(server)
        readings.append(("after", after))
    return report(args, outcomes, surprises, sent, seconds, readings, metrics_before, metrics_after)


def report(args, outcomes, surprises, sent, seconds, readings, metrics_before, metrics_after) -> int:
    total = sum(outcomes.values())
    print(f"\n{total} requests in {seconds:.0f} s ({total / seconds:.1f}/s, concurrency {args.concurrency}): "
          + ", ".join(f"{key} {outcomes[key]}" for key in ("ok", "refused", "cancelled", "lost", "unexpected")))
    for surprise, count in surprises.most_common(10):
        print(f"  unexpected: {surprise} x{count}")
    delta = {key: metrics_after.get(key, 0) - metrics_before.get(key, 0) for key in metrics_after
             if "total" in key}
    print("server-side mpt counts during the run: " + ", ".join(f"{k} {v:.0f}" for k, v in sorted(delta.items())))
    generations = sum(count for name, count in sent.items() if name.startswith("mpt") and "bad" not in name)
    finished = sum(v for k, v in delta.items() if k.startswith("mpt_requests_total"))
    print(f"mpt generations sent {generations}, finished on the server {finished:.0f} (each exactly once: "
          f"{'yes' if finished == generations else 'NO'})")
    print(f"mpt running/waiting at the end: {metrics_after.get('mpt_running_requests', 0):.0f}/"
          f"{metrics_after.get('mpt_waiting_requests', 0):.0f}")
    names = list(readings[0][1])
    print(f"\nRSS MiB{'':15}" + "".join(f"{label:>9}" for label, _ in readings) + "   growth  steady")
    worst = 0.0
    for name in names:
        values = [reading.get(name, 0.0) for _, reading in readings]
        growth, steady = (100 * (values[-1] - base) / base if base else 0.0 for base in (values[0], values[1]))
        worst = max(worst, steady)
        print(f"{name:<22}"[:22] + "".join(f"{value:>9.1f}" for value in values) + f"  {growth:+6.1f}% {steady:+6.1f}%")
    failed = outcomes["lost"] or outcomes["unexpected"] or worst > args.max_growth or finished != generations
    print(f"\nlost responses: {outcomes['lost']}; largest RSS growth from the first checkpoint {worst:+.1f}% "
          f"(limit {args.max_growth}%): {'FAIL' if failed else 'PASS'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
