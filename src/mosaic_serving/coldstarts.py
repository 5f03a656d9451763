"""`./scripts/coldstarts`: start the real server with every shipped model N times and count
the starts that came up and served one request from each model.

A server that dies at start-up on a busy node cannot sit behind a load balancer, so this is
run with a neighbour beside it (`--neighbour`): `heavy` runs processes doing multi-threaded
matrix products, streaming through several GB of memory and churning files in /dev/shm;
`stall` freezes one of our own backend processes for 1-2.5 s every 3-15 s, the starvation that makes
Triton 2.51's Python backend abort at start-up (see `LocalTritonServer.start`), made on
purpose. `--settings current single-try` interleaves the shipped launcher with the earlier
one (a single try) so both are measured under the same load.
Each start is reported with its outcome; the log of a failed start is kept.

    ./scripts/coldstarts -n 50 --neighbour stall --settings single-try current
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import random
import shutil
import signal
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
    ok: bool
    seconds: float
    detail: str  # "served all models", or what went wrong
    restarts: int = 0  # starts lost to a missed backend heartbeat and made again


@dataclass(frozen=True)
class LaunchSettings:
    """How the launcher starts the server: the shipped behaviour, or the earlier one."""

    name: str
    start_attempts: int


SETTINGS = {
    "current": LaunchSettings("current", start_attempts=3),
    "single-try": LaunchSettings("single-try", start_attempts=1),  # what the launcher did before
}


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


def cold_start(repository: Path, models: list[str], log_dir: Path, index: int,
               settings: LaunchSettings = SETTINGS["current"], startup_timeout: float = 600) -> StartOutcome:
    """Start the server, serve one request a model, stop it: the outcome of this start."""
    log_file = log_dir / f"start-{index:03d}-{settings.name}.log"
    began = time.monotonic()
    server = LocalTritonServer(repository, models=models, env=tiny_model_env({}), log_file=log_file,
                               startup_timeout=startup_timeout, restart_crashed_models=False,
                               start_attempts=settings.start_attempts)
    try:
        server.start()
        serve_one_request_each(server, models)
    except (ServerStartError, Exception) as error:  # noqa: BLE001 - every failure is an outcome
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        aborted = "lock_exception" in log_file.read_text(errors="replace") if log_file.exists() else False
        return StartOutcome(False, time.monotonic() - began,
                            f"{first_line}{' [boost lock_exception]' if aborted else ''} (log: {log_file})",
                            server.heartbeat_restarts)
    finally:
        server.stop()
    seconds = time.monotonic() - began
    log_file.unlink(missing_ok=True)  # only failed starts keep their log
    return StartOutcome(True, seconds, "served all models", server.heartbeat_restarts)


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


class Neighbour:
    """Load beside the servers until `stop()`: worker processes, or the stub staller."""

    WORKERS = {"none": (0, 0, 0, 0), "cpu": (4, 64, 0, 4), "heavy": (3, 1500, 200, 4)}
    KINDS = (*WORKERS, "stall")

    def __init__(self, kind: str):
        self.kind = kind
        self.processes: list[multiprocessing.Process] = []
        self.staller: StubStaller | None = None

    def start(self) -> "Neighbour":
        if self.kind == "stall":
            self.staller = StubStaller().start()
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
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            process.join(timeout=10)
        for leftover in Path("/dev/shm").glob("coldstarts-neighbour-*"):
            leftover.unlink(missing_ok=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--starts", type=int, default=10, help="cold starts per setting (default 10)")
    parser.add_argument("--neighbour", choices=Neighbour.KINDS, default="heavy",
                        help="load beside the server: heavy (CPU, memory, /dev/shm; the default), cpu, "
                        "stall (our own backend processes frozen > 1 s at random), none")
    parser.add_argument("--settings", nargs="+", choices=sorted(SETTINGS), default=["current"],
                        help="launcher settings to compare, interleaved start by start (default: current)")
    parser.add_argument("--models", nargs="+", default=list(ALL_MODELS))
    parser.add_argument("--model-repository", type=Path, default=default_model_repository())
    parser.add_argument("--startup-timeout", type=float, default=600,
                        help="seconds a start may take before it counts as hung (default 600)")
    parser.add_argument("--log-dir", type=Path, default=None, help="where failed starts keep their log")
    return parser.parse_args(argv)


def _summary(name: str, outcomes: list[StartOutcome]) -> str:
    up = sum(outcome.ok for outcome in outcomes)
    restarts = sum(outcome.restarts for outcome in outcomes)
    lines = [f"{name}: {up} of {len(outcomes)} came up and served every model"
             f" ({restarts} starts lost to a missed heartbeat were made again)"]
    failures = Counter(outcome.detail.split(" (log:")[0] for outcome in outcomes if not outcome.ok)
    lines += [f"  {count} x {detail}" for detail, count in failures.most_common()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="coldstarts-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    tiny_model_env({})  # build the tiny models before the clock starts
    outcomes: dict[str, list[StartOutcome]] = {name: [] for name in args.settings}
    neighbour = Neighbour(args.neighbour).start()
    try:
        time.sleep(3 if args.neighbour != "none" else 0)  # let the neighbour reach its stride
        for index in range(args.starts):
            for name in args.settings:
                outcome = cold_start(args.model_repository, args.models, log_dir, index, SETTINGS[name], args.startup_timeout)
                outcomes[name].append(outcome)
                print(f"start {index + 1}/{args.starts} [{name}]: {'up' if outcome.ok else 'FAILED'} in "
                      f"{outcome.seconds:.1f} s - {outcome.detail}"
                      f"{f' after {outcome.restarts} restart(s)' if outcome.restarts else ''}", flush=True)
    finally:
        neighbour.stop()
    print(f"\nmodels: {', '.join(args.models)}; neighbour: {args.neighbour}; "
          f"load average at the end {os.getloadavg()[0]:.1f}")
    for name, results in outcomes.items():
        print(_summary(name, results))
    all_up = all(outcome.ok for results in outcomes.values() for outcome in results)
    if all_up:
        shutil.rmtree(log_dir, ignore_errors=True)
    else:
        print(f"logs of failed starts: {log_dir}")
    return 0 if all_up else 1


if __name__ == "__main__":
    sys.exit(main())
