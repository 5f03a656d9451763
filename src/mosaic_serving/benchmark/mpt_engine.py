"""The generation engine against transformers' `model.generate`, on an MPT of a given shape.

    python -m mosaic_serving.benchmark.mpt_engine [--shape mpt-7b|tiny] [--batch-sizes 1 8 32]
        [--new-tokens 128] [--device cuda] [--output bench-results]

Meant for a GPU host: it builds MPT-7B's architecture (32 layers of width 4096, 6.6B
parameters) with random weights directly on the device, in bf16 on a GPU (no download, no
disk). Random weights cost the same time per token as trained ones (same shapes, same
kernels); only the text is gibberish. For each batch size it times, in one process:
- `engine`: that many greedy requests submitted together to the continuous-batching
  GenerationEngine (what the served `mpt` model runs), with time to first token and the
  gaps between its streamed pieces (a piece holds one token or more) per request;
- `generate`: one `model.generate(use_cache=True)` call on a batch of that many rows,
  MosaicML's way (with the KV cache, which MPT's config leaves off by default).
Every request makes exactly `new_tokens` tokens (no end-of-text stop). The floor is the
time to read the weights once per step at the device's memory bandwidth, measured in the same
run (`roofline`); the engine's batch-1 step (its time per token after the first) is reported
as a multiple of it. Writes `<output>/mpt-engine-<shape>.json` and `.md`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import transformers
from transformers import MptConfig, MptForCausalLM

from mosaic_serving.benchmark import in_process
from mosaic_serving.benchmark.report import save_results
from mosaic_serving.benchmark.roofline import memory_bandwidth, weight_bytes
from mosaic_serving.benchmark.stats import Measurement
from mosaic_serving.devices import resolve_device, resolve_dtype
from mosaic_serving.generation import GenerationEngine, SamplingParams
from mosaic_serving.tiny_models.mpt import build_tokenizer

SHAPES = {
    # mosaicml/mpt-7b's config.json: d_model 4096, 32 heads, 32 layers, vocabulary 50432
    "mpt-7b": {"d_model": 4096, "n_heads": 32, "n_layers": 32, "expansion_ratio": 4, "max_seq_len": 2048,
               "vocab_size": 50432},
    "tiny": {"d_model": 64, "n_heads": 4, "n_layers": 2, "expansion_ratio": 2, "max_seq_len": 512,
             "vocab_size": 384},
}
PROMPT = "MosaicML trains and serves large language models such as MPT-7B; Triton serves them with batching."


def build_random_model(shape: str, device: torch.device, dtype: torch.dtype, tokenizer_size: int) -> MptForCausalLM:
    """The architecture of `shape` with random weights, created on `device` in `dtype`.

    The embedding rows of token ids past `tokenizer_size` are zeroed (input and output share
    them, as in mpt-7b): those ids decode to no text with the small tokenizer used here, so a
    model choosing them would stream nothing. The matrix keeps its full shape, so each step
    costs what it costs with the real vocabulary.
    """
    config = MptConfig(**SHAPES[shape], tie_word_embeddings=True)  # as mpt-7b: no separate output matrix
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with device:
            model = MptForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    with torch.no_grad():
        model.lm_head.weight[tokenizer_size:] = 0
    return model.eval()


def time_generate(model, prompt_ids: list[int], new_tokens: int, batch_size: int, rounds: int) -> Measurement:
    """`rounds` calls of `model.generate` on `batch_size` copies of the prompt (greedy)."""
    device = next(model.parameters()).device
    input_ids = torch.tensor([prompt_ids] * batch_size, device=device)
    # use_cache=True: MptConfig (and the generation_config.json it saves) default to
    # use_cache=False, which would recompute the whole sequence every step.
    kwargs = {"attention_mask": torch.ones_like(input_ids), "max_new_tokens": new_tokens, "use_cache": True,
              "min_new_tokens": new_tokens, "do_sample": False, "eos_token_id": None, "pad_token_id": 0}
    model.generate(input_ids, **kwargs)  # warm-up
    latencies = []
    start = time.perf_counter()
    for _ in range(rounds):
        began = time.perf_counter()
        model.generate(input_ids, **kwargs)
        _synchronize(device)
        latencies.append((time.perf_counter() - began) * 1e3)
    elapsed = time.perf_counter() - start
    return Measurement("generate", batch_size, rounds * batch_size, elapsed, rounds * batch_size * new_tokens,
                       latencies * batch_size)


def greedy_agreement(model, engine: GenerationEngine, tokenizer, prompt_ids: list[int], new_tokens: int) -> str:
    """How much of `model.generate`'s greedy text one request through the engine reproduces.

    In bf16 the two can part at a near-tie of two logits (their kernels differ in batch
    shape and masking), so this reports the common prefix rather than asserting equality.
    """
    device = next(model.parameters()).device
    expected = model.generate(torch.tensor([prompt_ids], device=device), max_new_tokens=new_tokens, use_cache=True,
                              min_new_tokens=new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0)
    expected_text = tokenizer.decode(expected[0, len(prompt_ids):])
    params = SamplingParams(max_new_tokens=new_tokens, do_sample=False)
    got_text = "".join(event.text for event in engine.stream(prompt_ids, params))
    if got_text == expected_text:
        return "identical"
    common = next((i for i, (a, b) in enumerate(zip(got_text, expected_text)) if a != b), min(len(got_text), len(expected_text)))
    return f"first {common} of {len(expected_text)} characters identical"


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "CPU"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="mpt-7b")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds per point, after a warm-up")
    parser.add_argument("--device", default=None, help="default: cuda when there is a GPU")
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on a GPU, float32 on the CPU")
    parser.add_argument("--output", type=Path, default=Path("bench-results"))
    args = parser.parse_args(argv)

    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    bandwidth = memory_bandwidth(device, dtype, gib=4.0 if device.type == "cuda" else 1.0)
    if device.type == "cuda":  # the peak memory reported is the engine's, not that measurement's
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    began = time.perf_counter()
    tokenizer = build_tokenizer()
    model = build_random_model(args.shape, device, dtype, len(tokenizer))
    prompt_ids = tokenizer(PROMPT)["input_ids"]
    parameters = sum(p.numel() for p in model.parameters())
    print(f"built {args.shape} ({parameters / 1e9:.2f}B parameters, {dtype}) on {device} "
          f"in {time.perf_counter() - began:.1f} s", flush=True)

    floor = _floor(weight_bytes(model), bandwidth)
    began = time.perf_counter()
    engine = GenerationEngine(model, tokenizer, max_batch_size=max(args.batch_sizes))
    decode_step = engine.decode_step()
    print(f"engine loaded in {time.perf_counter() - began:.1f} s: {decode_step}", flush=True)
    params = SamplingParams(max_new_tokens=args.new_tokens, do_sample=False)
    agreement = greedy_agreement(model, engine, tokenizer, prompt_ids, args.new_tokens)
    points = []
    for batch_size in args.batch_sizes:
        submit = lambda on_event: engine.submit(prompt_ids, params, on_event)  # noqa: E731
        engine_point = in_process.mpt(submit, batch_size, args.rounds)
        engine_point.mode = "engine"
        generate_point = time_generate(model, prompt_ids, args.new_tokens, batch_size, args.rounds)
        points += [engine_point, generate_point]
        print(f"batch {batch_size}: engine {engine_point.outputs_per_s:.0f} tok/s, "
              f"generate {generate_point.outputs_per_s:.0f} tok/s", flush=True)
    engine.close()
    peak_memory = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None

    report = {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "shape": args.shape, "parameters": parameters, "dtype": str(dtype).removeprefix("torch."),
        "device": _device_name(device), "torch": torch.__version__, "transformers": transformers.__version__,
        "prompt_tokens": len(prompt_ids), "new_tokens": args.new_tokens, "greedy_engine_vs_generate": agreement,
        "decode_step": decode_step, **floor, "points": [p.summary() for p in points],
        "peak_memory_gib": round(peak_memory / 2**30, 1) if peak_memory is not None else None,
    }
    batch1 = next((p for p in report["points"] if p["mode"] == "engine" and p["concurrency"] == 1), None)
    if batch1 is not None and args.new_tokens > 1:
        # per token after the first: a streamed piece can hold several tokens
        per_token = (batch1["latency_p50_ms"] - batch1["ttft_p50_ms"]) / (args.new_tokens - 1)
        report["engine_batch1_ms_per_token"] = round(per_token, 3)
        report["engine_batch1_x_floor"] = round(per_token / floor["floor_ms_per_token"], 2)
    save_results(args.output / f"mpt-engine-{args.shape}", report, _markdown(report))
    return report


def _floor(weights: int, bandwidth: float) -> dict:
    """The time to read `weights` bytes once at `bandwidth` (bytes/s)."""
    return {"weights_bytes": weights, "bandwidth_gb_s": round(bandwidth / 1e9, 2),
            "floor_ms_per_token": round(weights / bandwidth * 1e3, 6)}


def _markdown(report: dict) -> str:
    lines = [
        f"# Generation engine vs model.generate: {report['shape']} ({report['parameters'] / 1e9:.2f}B, "
        f"{report['dtype']})", "",
        f"Device: {report['device']}, torch {report['torch']}; prompt {report['prompt_tokens']} tokens, "
        f"{report['new_tokens']} new tokens per request, greedy; engine's greedy text against generate's "
        f"(batch 1): {report['greedy_engine_vs_generate']}; {report['when']}, transformers "
        f"{report['transformers']}; engine {report['decode_step']}.", "",
        f"Floor: {report['weights_bytes'] / 1e9:.2f} GB of weights read once per step at "
        f"{report['bandwidth_gb_s']} GB/s (measured here) = {report['floor_ms_per_token']:.3g} ms a token at "
        f"batch 1; the engine's batch-1 step ({report.get('engine_batch1_ms_per_token', '-')} ms a token after the "
        f"first) is {report.get('engine_batch1_x_floor', '-')} x the floor.", "",
        "| batch | engine tok/s | generate tok/s | engine / generate | engine TTFT p50 ms | engine piece gap p50 ms |"
        " engine piece gap p99 ms |",
        "|---|---|---|---|---|---|---|",
    ]
    by_mode = {(p["mode"], p["concurrency"]): p for p in report["points"]}
    for batch in sorted({p["concurrency"] for p in report["points"]}):
        engine, generate = by_mode[("engine", batch)], by_mode[("generate", batch)]
        ratio = engine["outputs_per_s"] / generate["outputs_per_s"]
        lines.append(f"| {batch} | {engine['outputs_per_s']:.0f} | {generate['outputs_per_s']:.0f} | {ratio:.2f} | "
                     f"{engine['ttft_p50_ms']} | {engine['itl_p50_ms']} | {engine['itl_p99_ms']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
