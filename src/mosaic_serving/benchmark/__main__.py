"""Benchmark the served models with perf_analyzer against the in-process handlers.

    python -m mosaic_serving.benchmark [--size tiny|small] [--output bench-results]
    python -m mosaic_serving.benchmark --peers [...]   # the engine against CTranslate2 and vLLM (peers.py)

Starts a Triton server on free ports, loads each model over a range of concurrency (gRPC;
streaming for mpt), stops it, measures the in-process handler on the same inputs, and
writes `<output>/<size>.json` and `<output>/<size>.md` with throughput, p50/p99 latency,
time to first token, the gap between streamed pieces and the target ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import torch

from mosaic_serving.benchmark import in_process, perf
from mosaic_serving.benchmark.report import ratios, write_report
from mosaic_serving.handlers.mpt_fields import GenerateParameters
from mosaic_serving.tiny_models import tiny_model_path
from mosaic_serving.launcher.server import LocalTritonServer
from mosaic_serving.repository import default_model_repository

REPOSITORY = default_model_repository()
PROMPT = "The quick brown fox"
PAIR = ("Represent the sentence for retrieval:", "Triton serves models with dynamic batching.")
IMAGE = {"prompt": "a lighthouse at dawn", "height": 64, "width": 64, "num_inference_steps": 10, "seed": 1}

SIZES = {
    # served model -> tiny model it loads; tokens per mpt request; requests per measurement window
    "tiny": {"models": {"mpt": "mpt", "instructor": "instructor", "diffusion": "diffusion"},
             "mpt_tokens": 64, "requests": {"mpt": 48, "instructor": 400, "diffusion": 24}},
    "small": {"models": {"mpt": "mpt_small"}, "mpt_tokens": 32, "requests": {"mpt": 16}},
}
CONCURRENCY = {"mpt": [1, 2, 4, 8], "instructor": [1, 4, 16], "diffusion": [1, 2, 4]}


def served(size: dict, paths: dict[str, Path]) -> dict[str, list]:
    env = {f"{name.upper()}_MODEL": str(path) for name, path in paths.items()}
    results: dict[str, list] = {}
    with LocalTritonServer(REPOSITORY, models=list(paths), env=env) as server:
        for name in paths:
            inputs, streaming, key = _served_inputs(name, size)
            results[name] = [
                perf.run(name, server.grpc_url, inputs, c, size["requests"][name], streaming, key)
                for c in CONCURRENCY[name]
            ]
            print(f"served {name}: done", flush=True)
    return results


def _served_inputs(name: str, size: dict) -> tuple[dict, bool, str | None]:
    if name == "mpt":
        inputs = {"text_input": PROMPT, "max_new_tokens": size["mpt_tokens"], "do_sample": False, "stream": True}
        return inputs, True, "num_output_tokens"
    if name == "instructor":
        return {"instruction": PAIR[0], "text": PAIR[1]}, False, None
    return IMAGE, False, None


def baselines(size: dict, paths: dict[str, Path]) -> dict[str, list]:
    from mosaic_serving.handlers import HFInstructorHandler, MPTModelHandler, StableDiffusionHandler

    results: dict[str, list] = {}
    if "mpt" in paths:
        # the served model's compile mode (config.pbtxt reads the same variable)
        handler = MPTModelHandler(str(paths["mpt"]), compile_mode=os.environ.get("MPT_COMPILE_MODE", "auto"))
        rounds = max(2, size["requests"]["mpt"] // 8)
        request = handler.prepare(PROMPT, GenerateParameters(max_new_tokens=size["mpt_tokens"], do_sample=False))
        results["mpt"] = [in_process.mpt(lambda on_event: handler.submit(request, on_event), b, rounds) for b in (1, 8)]
        handler.close()
    if "instructor" in paths:
        handler = HFInstructorHandler(str(paths["instructor"]))
        results["instructor"] = [in_process.instructor(handler, PAIR, b, 3.0) for b in (1, 16)]
    if "diffusion" in paths:
        handler = StableDiffusionHandler(str(paths["diffusion"]))
        results["diffusion"] = [in_process.diffusion(handler, IMAGE, b, 3.0) for b in (1, 4)]
    return results


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if "--peers" in argv:
        from mosaic_serving.benchmark import peers

        peers.main([a for a in argv if a != "--peers"])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--output", type=Path, default=Path("bench-results"))
    parser.add_argument("--models", nargs="+", choices=sorted(CONCURRENCY), help="default: all of the size")
    args = parser.parse_args(argv)
    size = SIZES[args.size]
    chosen = args.models or list(size["models"])
    paths = {name: tiny_model_path(weights) for name, weights in size["models"].items() if name in chosen}
    measurements = served(size, paths)
    for name, points in baselines(size, paths).items():
        measurements[name] += points
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
    report = {
        "size": args.size,
        "machine": machine,
        "models": {name: [m.summary() for m in points] for name, points in measurements.items()},
        "ratios": ratios(measurements),
    }
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / f"{args.size}.json").write_text(json.dumps(report, indent=2))
    write_report(report, args.output / f"{args.size}.md")
    print((args.output / f"{args.size}.md").read_text())


if __name__ == "__main__":
    main()
