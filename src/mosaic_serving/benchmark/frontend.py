"""What the HTTP frontend adds over calling Triton directly: time to first token, whole
request latency and throughput, through the frontend and straight over gRPC, in one run.

    python -m mosaic_serving.benchmark.frontend [--requests 64] [--concurrency 1 16]
    python -m mosaic_serving.benchmark.frontend --triton-grpc HOST:PORT --frontend http://HOST:9000

Without addresses it starts Triton (the tiny `mpt` and `custom_example`) and the frontend on
free ports. Both paths are driven the same way, from one asyncio process: `mpt` streams of
`--tokens` greedy tokens (POST /v1/completions with `stream` vs `AsyncClient.stream_generation`),
and `custom_example` calls that do almost no work (POST /custom_example/predict vs
`AsyncClient.call_handler`), which show the frontend's own cost per request. The two paths
alternate per round so that load from elsewhere falls on both alike.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable

import aiohttp
import numpy as np
from mosaic_client import AsyncClient

from mosaic_serving.repository import default_model_repository

PROMPT = "The quick brown fox"
REPOSITORY = default_model_repository()


@dataclass
class Timings:
    first_ms: list[float] = field(default_factory=list)
    whole_ms: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> dict[str, float]:
        result = {"requests_per_s": round(len(self.whole_ms) / self.seconds, 1),
                  "whole_p50_ms": round(float(np.percentile(self.whole_ms, 50)), 2)}
        if self.first_ms:
            result["ttft_p50_ms"] = round(float(np.percentile(self.first_ms, 50)), 2)
        return result


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
                if first is None and line.startswith(b"data: {") and b'"text": ""' not in line:
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


async def measure(triton_grpc: str, frontend_url: str, requests: int, concurrencies: list[int], tokens: int,
                  rounds: int) -> list[dict]:
    rows = []
    connector = aiohttp.TCPConnector(limit=0)
    async with AsyncClient(triton_grpc, timeout=300, max_concurrency=256) as client, \
            aiohttp.ClientSession(frontend_url, connector=connector) as session:
        paths = {
            ("mpt stream", "direct gRPC"): direct_stream(client, tokens),
            ("mpt stream", "frontend"): frontend_stream(session, tokens),
            ("custom_example", "direct gRPC"): direct_handler(client),
            ("custom_example", "frontend"): frontend_handler(session),
        }
        for call in paths.values():  # warm up connections and code paths
            await run(call, 4, 2)
        for concurrency in concurrencies:
            merged: dict[tuple[str, str], Timings] = {key: Timings() for key in paths}
            for _ in range(rounds):
                for key, call in paths.items():
                    timings = await run(call, requests // rounds, concurrency)
                    merged[key].first_ms += timings.first_ms
                    merged[key].whole_ms += timings.whole_ms
                    merged[key].seconds += timings.seconds
            for (workload, path), timings in merged.items():
                rows.append({"workload": workload, "path": path, "concurrency": concurrency, **timings.summary()})
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| workload | concurrency | path | TTFT p50 ms | whole p50 ms | requests/s |", "|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['workload']} | {row['concurrency']} | {row['path']} | {row.get('ttft_p50_ms', '')} | "
                     f"{row['whole_p50_ms']} | {row['requests_per_s']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--triton-grpc", help="a running Triton (default: start one with the tiny models)")
    parser.add_argument("--frontend", help="a running frontend's URL (default: start one)")
    parser.add_argument("--requests", type=int, default=64, help="requests per path and concurrency")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--tokens", type=int, default=16, help="tokens each mpt stream generates")
    parser.add_argument("--rounds", type=int, default=4, help="alternations of the paths")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)

    from contextlib import ExitStack

    from mosaic_serving.frontend import FrontendProcess
    from mosaic_serving.serve import tiny_model_env
    from mosaic_serving.launcher.server import LocalTritonServer, free_port

    with ExitStack() as stack:
        triton_grpc = args.triton_grpc
        if triton_grpc is None:
            server = LocalTritonServer(REPOSITORY, models=["mpt", "custom_example"], env=tiny_model_env({}))
            triton_grpc = stack.enter_context(server).grpc_url
        frontend_url = args.frontend
        if frontend_url is None:
            frontend_url = stack.enter_context(FrontendProcess(triton_grpc, free_port())).url
        rows = asyncio.run(measure(triton_grpc, frontend_url, args.requests, args.concurrency, args.tokens,
                                   args.rounds))
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
