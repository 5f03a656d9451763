"""One engine of the peers benchmark, in a process (and Python environment) of its own.

    <python> peer_worker.py ENGINE MODEL_PATH

ENGINE is `engine` (this project's GenerationEngine), `generate` (transformers'
`model.generate`, use_cache=True), `ctranslate2` or `vllm`. The worker loads the model once,
prints `{"ready": ...}` (with how this project's engine decodes, for the report), then
answers one JSON line per request line on stdin:
`{"prompts": [[token ids]...], "new_tokens": N, "sample": false}` ->
`{"seconds": wall time, "outputs": [[token ids] or "text", ...]}`. Every request makes
exactly N tokens (end-of-text ignored), so every engine does the same work.

This file imports only the standard library at the top: it runs in the peers' own
environments, where this package is not installed.
"""

from __future__ import annotations

import json
import os
import sys
import time

SAMPLING = {"temperature": 0.8, "top_p": 0.95}  # MosaicML's defaults


class TransformersGenerate:
    def __init__(self, path: str):
        import torch
        from transformers import AutoModelForCausalLM

        self.torch = torch
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()

    def run(self, prompts: list[list[int]], new_tokens: int, sample: bool) -> list:
        torch = self.torch
        input_ids = torch.tensor(prompts)  # the benchmark's prompts all have the same length
        with torch.inference_mode():
            output = self.model.generate(
                input_ids, attention_mask=torch.ones_like(input_ids), use_cache=True, max_new_tokens=new_tokens,
                min_new_tokens=new_tokens, do_sample=sample, eos_token_id=None, pad_token_id=0,
                **(SAMPLING if sample else {}))
        return output[:, input_ids.shape[1]:].tolist()


class Engine:
    """This project's GenerationEngine (whichever version is on sys.path)."""

    def __init__(self, path: str):
        import inspect

        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from mosaic_serving.generation import GenerationEngine, SamplingParams

        self.SamplingParams = SamplingParams
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        options = {}
        if "compile_mode" in inspect.signature(GenerationEngine).parameters:
            options["compile_mode"] = os.environ.get("PEERS_COMPILE_MODE", "auto")
        self.engine = GenerationEngine(model, tokenizer, max_batch_size=32, **options)
        # how its steps run (on the CPU, "auto" picks the faster kernels by timing them at load)
        self.decode_step = self.engine.decode_step() if hasattr(self.engine, "decode_step") else None

    def run(self, prompts: list[list[int]], new_tokens: int, sample: bool) -> list:
        import threading

        params = self.SamplingParams(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=sample,
                                     seed=len(prompts), **SAMPLING)
        texts = [[] for _ in prompts]
        done = threading.Semaphore(0)
        for row, prompt in enumerate(prompts):
            def on_event(event, pieces=texts[row]):
                pieces.append(event.text)
                if event.finish_reason is not None:
                    done.release()
            self.engine.submit(prompt, params, on_event)
        for _ in prompts:
            done.acquire()
        return ["".join(pieces) for pieces in texts]


class CTranslate2:
    def __init__(self, path: str):
        import tempfile

        import ctranslate2
        from ctranslate2.converters import transformers as converters

        # CTranslate2 registers its MPT loader for the remote-code config class `MPTConfig`;
        # transformers' built-in MPT names its config class `MptConfig`. Same weights, same names.
        if "MptConfig" not in converters._MODEL_LOADERS:
            converters.register_loader("MptConfig")(converters.MPTLoader)
        output = os.path.join(tempfile.mkdtemp(prefix="ct2-"), "model")
        converters.TransformersConverter(path, load_as_float16=False).convert(output, quantization="float32")
        threads = int(os.environ.get("PEERS_THREADS", "2"))
        self.generator = ctranslate2.Generator(output, device="cpu", compute_type="float32", intra_threads=threads)
        with open(os.path.join(output, "vocabulary.json")) as file:
            self.vocabulary = json.load(file)  # CTranslate2 takes tokens as strings

    def run(self, prompts: list[list[int]], new_tokens: int, sample: bool) -> list:
        tokens = [self.generator_tokens(p) for p in prompts]
        options = {"sampling_topk": 0, "sampling_topp": SAMPLING["top_p"],
                   "sampling_temperature": SAMPLING["temperature"]} if sample else {"sampling_topk": 1}
        results = self.generator.generate_batch(
            tokens, max_length=new_tokens, min_length=new_tokens, include_prompt_in_result=False,
            end_token=[], **options)
        return [result.sequences_ids[0] for result in results]

    def generator_tokens(self, prompt: list[int]) -> list[str]:
        return [self.vocabulary[i] for i in prompt]


class VLLM:
    def __init__(self, path: str):
        from vllm import LLM

        self.llm = LLM(model=path, dtype="float32", max_model_len=512, max_num_seqs=32, seed=0,
                       disable_log_stats=True)

    def run(self, prompts: list[list[int]], new_tokens: int, sample: bool) -> list:
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=new_tokens, min_tokens=new_tokens, ignore_eos=True,
                                **(SAMPLING if sample else {"temperature": 0.0}))
        requests = [{"prompt_token_ids": prompt} for prompt in prompts]
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        return [list(output.outputs[0].token_ids) for output in outputs]


ENGINES = {"engine": Engine, "generate": TransformersGenerate, "ctranslate2": CTranslate2, "vllm": VLLM}


def main() -> None:
    name, path = sys.argv[1], sys.argv[2]
    # Replies go to the original stdout; everything else that writes to file descriptor 1
    # (libraries, their child processes) goes to stderr, so it cannot corrupt the replies.
    reply = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    began = time.perf_counter()
    worker = ENGINES[name](path)
    print(json.dumps({"ready": True, "load_seconds": time.perf_counter() - began,
                      "decode_step": getattr(worker, "decode_step", None)}), file=reply, flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        began = time.perf_counter()
        outputs = worker.run(request["prompts"], request["new_tokens"], request.get("sample", False))
        seconds = time.perf_counter() - began
        print(json.dumps({"seconds": seconds, "outputs": outputs}), file=reply, flush=True)


if __name__ == "__main__":
    main()
