"""What the HTTP frontend adds over calling Triton directly: time to first token, whole
request latency and throughput, through the frontend and straight over gRPC and HTTP, in one run.

    python -m mosaic_serving.benchmark.frontend [--requests 64] [--concurrency 1 16]
    python -m mosaic_serving.benchmark.frontend --triton-grpc HOST:PORT --triton-http HOST:PORT \
        --frontend http://HOST:9000 [--frontend before=http://HOST:9100 ...]

Without addresses it starts Triton (the tiny `mpt` and `custom_example`) and two frontends on
free ports, one calling Triton over HTTP (the default) and one over gRPC. Every path is driven
the same way, from one asyncio process: `mpt` streams of `--tokens` greedy tokens (POST
/v1/completions with `stream` vs `AsyncClient.stream_generation`), and `custom_example` calls
that do almost no work (POST /custom_example/predict vs `AsyncClient.call_handler`), which
show the frontend's own cost per request; each streamed chunk is parsed, as clients do. The
paths alternate per round so that load from elsewhere falls on all alike. Where it starts the
processes, each row also has the CPU time per request of Triton (with its backend processes),
of each frontend and of the load generator.

`--split-cores` puts Triton and its models on half of the cores and the frontends and the load
generator on the other half, so that the frontend's time at concurrency 1 is not spent waiting
for cores that the model's threads hold (on a GPU host the model computes on the GPU). The
load generator shares the frontends' half: at concurrency 16 that half, not the model, can be
what limits the frontend's path.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable

import aiohttp
import numpy as np
from mosaic_client import AsyncClient

from mosaic_serving.launcher.procfs import tree_cpu_seconds
from mosaic_serving.repository import default_model_repository

PROMPT = "The quick brown fox"
REPOSITORY = default_model_repository()


@dataclass
class Timings:
    first_ms: list[float] = field(default_factory=list)
    whole_ms: list[float] = field(default_factory=list)
    seconds: float = 0.0
    cpu_seconds: dict[str, float] = field(default_factory=dict)  # process -> CPU time spent

    def summary(self) -> dict:
        requests = len(self.whole_ms)
        result = {"requests_per_s": round(requests / self.seconds, 1),
                  "whole_p50_ms": round(float(np.percentile(self.whole_ms, 50)), 2)}
        if self.first_ms:
            result["ttft_p50_ms"] = round(float(np.percentile(self.first_ms, 50)), 2)
        if self.cpu_seconds:
            result["cpu_ms_per_request"] = {name: round(seconds / requests * 1e3, 2)
                                            for name, seconds in self.cpu_seconds.items()}
        return result


def cpu_seconds(processes: dict[str, int]) -> dict[str, float]:
    """CPU time so far of each named process (with its children), and of this load generator."""
    return {**{name: tree_cpu_seconds(pid) for name, pid in processes.items()}, "load generator": time.process_time()}


Call = Callable[[Timings], Awaitable[None]]


async def run(call: Call, requests: int, concurrency: int) -> Timings:
    """`requests` calls, `concurrency` at a time."""
    timings = Timings()
    queue = iter(range(requests))

    async def worker() -> None:
        for _ in queue:
            await call(timings)

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    timings.seconds = time.perf_counter() - began
    return timings


def direct_stream(client: AsyncClient, tokens: int) -> Call:
    async def call(timings: Timings) -> None:
        began = time.perf_counter()
        first = None
        async for piece in client.stream_generation(PROMPT, max_tokens=tokens, min_tokens=tokens, do_sample=False):
            if first is None and piece.text:
                first = time.perf_counter()
        timings.first_ms.append((first - began) * 1e3)
        timings.whole_ms.append((time.perf_counter() - began) * 1e3)
    return call


def frontend_stream(session: aiohttp.ClientSession, tokens: int) -> Call:
    body = {"model": "mpt", "prompt": PROMPT, "max_tokens": tokens, "min_tokens": tokens, "temperature": 0,
            "stream": True}

    async def call(timings: Timings) -> None:
        began = time.perf_counter()
        first = None
        async with session.post("/v1/completions", json=body) as response:
            assert response.status == 200, await response.text()
            async for line in response.content:
                if not line.startswith(b"data: {"):
                    continue
                chunk = json.loads(line[len(b"data: "):])  # as an OpenAI client reads each chunk
                if first is None and chunk["choices"][0]["text"]:
                    first = time.perf_counter()
        timings.first_ms.append((first - began) * 1e3)
        timings.whole_ms.append((time.perf_counter() - began) * 1e3)
    return call


def direct_handler(client: AsyncClient) -> Call:
    async def call(timings: Timings) -> None:
        began = time.perf_counter()
        await client.call_handler("custom_example", {"input": "to be or not to be"})
        timings.whole_ms.append((time.perf_counter() - began) * 1e3)
    return call


def frontend_handler(session: aiohttp.ClientSession) -> Call:
    async def call(timings: Timings) -> None:
        began = time.perf_counter()
        async with session.post("/custom_example/predict", json={"inputs": ["to be or not to be"]}) as response:
            assert response.status == 200, await response.text()
            await response.read()
        timings.whole_ms.append((time.perf_counter() - began) * 1e3)
    return call


async def measure(triton_grpc: str, triton_http: str, frontends: dict[str, str], requests: int,
                  concurrencies: list[int], tokens: int, rounds: int, processes: dict[str, int]) -> list[dict]:
    """Rows of the table: each workload through each path (`frontends`: label -> base URL),
    with the CPU time each of `processes` (name -> pid) spent on it."""
    rows = []
    async with contextlib.AsyncExitStack() as stack:
        paths: dict[tuple[str, str], Call] = {}
        for protocol, url in (("gRPC", triton_grpc), ("HTTP", triton_http)):
            client = await stack.enter_async_context(AsyncClient(url, protocol.lower(), timeout=300,
                                                                 max_concurrency=256))
            paths["mpt stream", f"direct {protocol}"] = direct_stream(client, tokens)
            paths["custom_example", f"direct {protocol}"] = direct_handler(client)
        for label, url in frontends.items():
            session = await stack.enter_async_context(aiohttp.ClientSession(
                url, connector=aiohttp.TCPConnector(limit=0)))
            paths["mpt stream", label] = frontend_stream(session, tokens)
            paths["custom_example", label] = frontend_handler(session)
        for call in paths.values():  # warm up connections and code paths
            await run(call, 4, 2)
        for concurrency in concurrencies:
            merged: dict[tuple[str, str], Timings] = {key: Timings() for key in paths}
            for _ in range(rounds):
                for key, call in paths.items():
                    before = cpu_seconds(processes)
                    timings = await run(call, requests // rounds, concurrency)
                    for name, seconds in cpu_seconds(processes).items():
                        merged[key].cpu_seconds[name] = merged[key].cpu_seconds.get(name, 0.0) + seconds - before[name]
                    merged[key].first_ms += timings.first_ms
                    merged[key].whole_ms += timings.whole_ms
                    merged[key].seconds += timings.seconds
            mpt_first = sorted(merged.items(), key=lambda item: item[0][0] != "mpt stream")  # stable: paths in order
            for (workload, path), timings in mpt_first:
                rows.append({"workload": workload, "path": path, "concurrency": concurrency, **timings.summary()})
    return rows


def labelled(urls: list[str]) -> dict[str, str]:
    """label -> URL from `--frontend` values, "URL" (label `frontend`) or "LABEL=URL"."""
    result = {}
    for value in urls:
        label, separator, url = value.partition("=")
        result[label if separator else "frontend"] = url if separator else value
    return result


def table(rows: list[dict]) -> str:
    processes = list(rows[0].get("cpu_ms_per_request", {})) if rows else []
    lines = ["| workload | concurrency | path | TTFT p50 ms | whole p50 ms | requests/s |"
             + "".join(f" CPU ms/request: {name} |" for name in processes),
             "|---|---|---|---|---|---|" + "---|" * len(processes)]
    for row in rows:
        cpu = row.get("cpu_ms_per_request", {})
        lines.append(f"| {row['workload']} | {row['concurrency']} | {row['path']} | {row.get('ttft_p50_ms', '')} | "
                     f"{row['whole_p50_ms']} | {row['requests_per_s']} |" + "".join(f" {cpu[name]} |" for name in processes))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--triton-grpc", help="a running Triton's gRPC address (default: start one with the tiny "
                        "models, and its frontends)")
    parser.add_argument("--triton-http", help="the running Triton's HTTP address")
    parser.add_argument("--frontend", action="append", default=[],
                        help="a running frontend's URL, or LABEL=URL; repeatable (default: start them)")
    parser.add_argument("--requests", type=int, default=64, help="requests per path and concurrency")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--tokens", type=int, default=16, help="tokens each mpt stream generates")
    parser.add_argument("--rounds", type=int, default=4, help="alternations of the paths")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--split-cores", action="store_true",
                        help="Triton and its models on the first half of the cores, the frontends and this load "
                        "generator on the rest, so that the frontend takes no CPU from the model (as on a GPU host)")
    args = parser.parse_args(argv)

    from contextlib import ExitStack

    from mosaic_serving.frontend import FrontendProcess
    from mosaic_serving.serve import tiny_model_env
    from mosaic_serving.launcher.server import LocalTritonServer, free_port

    if (args.triton_grpc is None) != (args.triton_http is None) or (args.frontend and not args.triton_grpc):
        parser.error("a running Triton takes both --triton-grpc and --triton-http, and --frontend needs them")
    cores = sorted(os.sched_getaffinity(0))
    if args.split_cores and (args.triton_grpc or len(cores) < 2):
        parser.error("--split-cores starts the servers itself, and needs two cores or more")
    server_cores, client_cores = (cores[:len(cores) // 2], cores[len(cores) // 2:]) if args.split_cores else (cores, cores)
    processes: dict[str, int] = {}  # name -> pid, of the processes started here
    with ExitStack() as stack:
        triton_grpc, triton_http, frontends = args.triton_grpc, args.triton_http, labelled(args.frontend)
        if triton_grpc is None:
            os.sched_setaffinity(0, server_cores)  # inherited by Triton and its backend processes
            server = stack.enter_context(LocalTritonServer(REPOSITORY, models=["mpt", "custom_example"],
                                                           env=tiny_model_env({})))
            os.sched_setaffinity(0, client_cores)  # the frontends, and this process
            triton_grpc, triton_http = server.grpc_url, server.http_url
            processes["triton"] = server.process.pid  # with its backend processes
            for label, url in (("frontend", f"http://{triton_http}"), ("frontend over gRPC", f"grpc://{triton_grpc}")):
                frontend = stack.enter_context(FrontendProcess(url, free_port()))
                frontends[label], processes[label] = frontend.url, frontend.process.pid
        rows = asyncio.run(measure(triton_grpc, triton_http, frontends, args.requests, args.concurrency,
                                   args.tokens, args.rounds, processes))
    if args.split_cores:
        print(f"Triton on cores {server_cores}; the frontends and the load generator on {client_cores}")
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
