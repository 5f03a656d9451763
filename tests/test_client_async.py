"""mosaic_client.AsyncClient against the real server: concurrency, cancellation, event loops.

Each test runs its coroutine with asyncio.run (no pytest plugin needed).
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from mosaic_client import AsyncClient, Client
from test_client_support import STREAMS, GREEDY, LONG, PROMPT, PROTOCOLS, EngineWatch, url_for


SHORT = {"max_new_tokens": 16, **GREEDY}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_concurrent_generations_each_equal_their_solo_result(server, protocol):
    prompts = ["Hello world", "The quick brown fox", "abc", "Once upon a time"]

    async def run() -> tuple[list[str], list[str]]:
        async with AsyncClient(url_for(server, protocol), protocol) as client:
            solo = [(await client.generate(prompt, **SHORT)).text for prompt in prompts]
            together = await asyncio.gather(*(client.generate(prompt, **SHORT) for prompt in prompts))
            streamed = await asyncio.gather(*(_joined(client.stream(prompt, **SHORT)) for prompt in prompts))
        return solo, [result.text for result in together], streamed

    solo, together, streamed = asyncio.run(run())
    assert len(set(solo)) == len(prompts)
    assert together == solo and streamed == solo


async def _joined(pieces) -> str:
    return "".join([piece async for piece in pieces])


def test_embed_sends_one_request_per_pair_so_the_server_batches_them(server):
    """Dynamic batching only works across requests: the 16 pairs must run in fewer executions."""
    stats = grpcclient.InferenceServerClient(server.grpc_url)

    def counts() -> tuple[int, int]:
        [model] = stats.get_inference_statistics("instructor", as_json=True)["model_stats"]
        return int(model.get("inference_count", 0)), int(model.get("execution_count", 0))

    async def run() -> np.ndarray:
        async with AsyncClient(server.grpc_url) as client:
            return await client.embed([f"text number {index}" for index in range(16)], instruction="Represent:")

    before = counts()
    embeddings = asyncio.run(run())
    inferences, executions = (after - was for after, was in zip(counts(), before))
    stats.close()
    assert embeddings.shape[0] == 16 and len({row.tobytes() for row in embeddings}) == 16
    assert inferences == 16 and executions < 16


class _Gate:
    """Lets `count` tasks through once all of them have arrived (asyncio.Barrier is 3.11+)."""

    def __init__(self, count: int):
        self.waiting = count
        self.open = asyncio.Event()

    async def arrive(self) -> None:
        self.waiting -= 1
        if self.waiting == 0:
            self.open.set()
        await self.open.wait()


async def _leave_streams(client: AsyncClient, how: str) -> None:
    """STREAMS long streams at once; all leave (`how`) once all have a first piece."""
    gate = _Gate(STREAMS + 1)

    async def consume() -> None:
        async for _ in client.stream(PROMPT, **LONG):
            await gate.arrive()
            if how == "break":
                break
            await asyncio.sleep(3600)  # until cancelled

    tasks = [asyncio.ensure_future(consume()) for _ in range(STREAMS)]
    await asyncio.wait_for(gate.arrive(), 60)
    if how == "cancel":
        for task in tasks:
            task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


@pytest.mark.parametrize("how", ["break", "cancel"])
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_breaking_or_cancelling_stops_generation_on_the_server(server, protocol, how):
    watch = EngineWatch(server)

    async def run() -> None:
        async with AsyncClient(url_for(server, protocol), protocol) as client:
            await _leave_streams(client, how)
            await asyncio.to_thread(watch.assert_cancelled, STREAMS)  # this loop runs on meanwhile

    asyncio.run(run())


def test_one_async_client_serves_successive_event_loops(server):
    client = AsyncClient(server.grpc_url)

    async def generate() -> str:
        return (await client.generate(PROMPT, max_new_tokens=4, **GREEDY)).text

    assert asyncio.run(generate()) == asyncio.run(generate())
    asyncio.run(client.close())


def test_blocking_client_works_inside_a_running_event_loop(server):
    """Client runs on its own loop thread, so it works where asyncio.run would refuse (Jupyter)."""
    async def inside() -> int:
        with Client(server.http_url, "http") as client:
            return client.generate(PROMPT, max_new_tokens=3, do_sample=False).num_output_tokens

    assert asyncio.run(inside()) == 3
