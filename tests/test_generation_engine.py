"""The generation engine's parts on the tiny MPT: the serving forward against transformers,
the batched sampler against transformers' processors, the scheduler, the compiled decode step
and the transformers runner other architectures use."""

from __future__ import annotations

import queue

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from mosaic_serving.generation import GenerationEngine, SamplingParams, cpu_kernels
from mosaic_serving.generation import decode_step as decode_step_module
from mosaic_serving.generation import mpt_model
from mosaic_serving.generation.request import Request
from mosaic_serving.generation.runner import MptRunner, TransformersRunner
from mosaic_serving.generation.sampling import BatchSampler, RowSampler
from mosaic_serving.generation.scheduler import Scheduler
from mosaic_serving.generation.text import IncrementalText
from mosaic_serving.tiny_models import mpt as tiny_mpt

PROMPTS = ["Hello café 東京", "The quick brown fox jumps over the lazy dog", "def fibonacci(n):"]
TIMEOUT = 60


def load(path):
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def tiny(tiny_mpt_path):
    return load(tiny_mpt_path), AutoTokenizer.from_pretrained(tiny_mpt_path)


@pytest.fixture(scope="module")
def untouched(tiny_mpt_path):
    """The model as a user loads it, never given to an engine (which stores its matrices in a
    layout of its own), for reference outputs."""
    return load(tiny_mpt_path)


def reference(model, tokenizer, prompt: str, new_tokens: int) -> str:
    """transformers' greedy `generate` with its KV cache, exactly `new_tokens` tokens."""
    inputs = tokenizer(prompt, return_tensors="pt")
    output = model.generate(**inputs, use_cache=True, do_sample=False, max_new_tokens=new_tokens,
                            min_new_tokens=new_tokens, eos_token_id=None, pad_token_id=0)
    return tokenizer.decode(output[0, inputs.input_ids.shape[1]:], skip_special_tokens=True)


def run_staggered(engine: GenerationEngine, tokenizer, requests: list[tuple[str, SamplingParams]]) -> list[str]:
    """Submit each request once the previous one has streamed its first event (so each joins
    a running batch); return every request's whole text."""
    texts, finals = [[] for _ in requests], queue.Queue()
    for row, (prompt, params) in enumerate(requests):
        first = queue.Queue()

        def on_event(event, row=row, first=first):
            texts[row].append(event.text)
            first.put(True)
            if event.finish_reason is not None:
                finals.put((row, event))
        engine.submit(tokenizer(prompt)["input_ids"], params, on_event)
        first.get(timeout=TIMEOUT)
    for _ in requests:
        row, event = finals.get(timeout=TIMEOUT)
        assert event.error is None, event.error
    return ["".join(pieces) for pieces in texts]


def exact(new_tokens: int, **extra) -> SamplingParams:
    return SamplingParams(max_new_tokens=new_tokens, min_new_tokens=new_tokens, **extra)


def count_separate_prefills(engine: GenerationEngine) -> list[int]:
    """A counter of the prompts the engine prefills in a pass of their own (not joined to a
    decode step's pass)."""
    decoder, count = engine.runner.decoder, [0]
    prefill = decoder.prefill

    def counted(input_ids, *args):
        count[0] += input_ids.shape[0]
        return prefill(input_ids, *args)

    decoder.prefill = counted
    return count


@pytest.mark.parametrize("compile_mode", ["none", "prepack", "default", "auto", "freeze"])
def test_greedy_requests_joining_mid_stream_equal_generate(tiny, untouched, compile_mode):
    """Different prompt lengths and lengths of output, each joining while others decode (its
    prompt in the running batch's decode pass); "prepack" runs oneDNN's packed kernels,
    "default" (on the CPU: inductor over dynamic shapes) and "freeze" the compiled decode step,
    "auto" whichever of "prepack" and "default" it chose. Dynamic shapes compile nothing after
    the load, though the rows and the cache columns a step reads change."""
    model, tokenizer = tiny
    engine = GenerationEngine(model, tokenizer, max_batch_size=4, compile_mode=compile_mode)
    try:
        step = engine.runner.step
        assert step.mode in (("default", "prepack") if compile_mode == "auto" else (compile_mode,))
        assert step.fallback_reason is None and step.compiled == (step.mode in ("default", "freeze", "prepack"))
        separate = count_separate_prefills(engine)
        lengths = [40, 25, 33]
        texts = run_staggered(engine, tokenizer, [(p, exact(n, do_sample=False)) for p, n in zip(PROMPTS, lengths)])
        assert texts == [reference(untouched, tokenizer, p, n) for p, n in zip(PROMPTS, lengths)]
        assert engine.decoded.rows > engine.decoded.steps  # rows shared steps
        assert separate[0] == 1  # the first prompt, into an empty batch; the others joined a decode pass
    finally:
        engine.close()


def test_a_request_joining_into_a_freed_slot_below_running_ones_equals_generate(tiny, untouched):
    """Two slots: the first request ends, the third takes its slot 0 while the second decodes
    in slot 1, so the joint pass also runs slot 0 as an unused decode row, whose cache writes
    the prompt's must overwrite."""
    model, tokenizer = tiny
    engine = GenerationEngine(model, tokenizer, max_batch_size=2)
    try:
        separate = count_separate_prefills(engine)
        lengths, finals = [3, 40, 30], queue.Queue()
        texts = [[] for _ in lengths]

        def submit(row: int) -> queue.Queue:
            first = queue.Queue()

            def on_event(event):
                texts[row].append(event.text)
                first.put(True)
                if event.finish_reason is not None:
                    finals.put(row)
            engine.submit(tokenizer(PROMPTS[row])["input_ids"], exact(lengths[row], do_sample=False), on_event)
            return first

        submit(0).get(timeout=TIMEOUT)
        submit(1).get(timeout=TIMEOUT)
        assert finals.get(timeout=TIMEOUT) == 0  # slot 0 is free, slot 1 decodes
        submit(2)
        assert sorted(finals.get(timeout=TIMEOUT) for _ in range(2)) == [1, 2]
        assert ["".join(t) for t in texts] == [reference(untouched, tokenizer, p, n) for p, n in zip(PROMPTS, lengths)]
        assert separate[0] == 1
    finally:
        engine.close()


@pytest.mark.parametrize("compile_mode, slots", [("default", 4), ("default", 2), ("prepack", 4)])
def test_the_compiled_cpu_step_compiles_nothing_after_the_load(tiny, tmp_path, compile_mode, slots):
    """On the CPU, "default" compiles at load the graphs every later step uses, whatever its rows
    and cache columns ("prepack": its one-row step). The head size here (64) equals a block of
    cache columns, as in mosaicml/mpt-7b's family, which torch would otherwise fix as one size.
    With two slots, two rows are all the slots, which torch specialises."""
    tiny_mpt.build(tmp_path, d_model=128, n_heads=2)
    model, untouched, tokenizer = load(tmp_path), load(tmp_path), tiny[1]
    engine = GenerationEngine(model, tokenizer, max_batch_size=slots, compile_mode=compile_mode)
    try:
        step = engine.runner.step
        assert step.dynamic and step.fallback_reason is None
        graphs_at_load = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        lengths = [140, 25, 70]  # up to a third block of 64 cache columns, 1 to 3 rows
        texts = run_staggered(engine, tokenizer, [(p, exact(n, do_sample=False)) for p, n in zip(PROMPTS, lengths)])
        assert texts == [reference(untouched, tokenizer, p, n) for p, n in zip(PROMPTS, lengths)]
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs_at_load
        assert step.fallback_reason is None
    finally:
        engine.close()


def test_prepack_compiles_one_row_steps_with_a_loop_over_each_row_major_matrix(tiny, untouched, monkeypatch):
    """"prepack": the one-row step's graph, traced at load, takes every product (the blocks'
    and the output matrix's) as `_vector_product` over the matrices stored row-major again;
    eager steps (several rows) keep oneDNN's products."""
    traced = []
    vector_product = mpt_model._vector_product
    monkeypatch.setattr(mpt_model, "_vector_product", lambda module, x: traced.append(module) or vector_product(module, x))
    model, tokenizer = tiny
    engine = GenerationEngine(model, tokenizer, max_batch_size=4, compile_mode="prepack")
    try:
        decoder = engine.runner.decoder
        assert all(linear.weight.is_contiguous() for linear in decoder.block_linears())
        assert set(traced) == {*decoder.block_linears(), decoder.lm_head}
        lengths = [12, 30]  # one row alone, then two
        texts = run_staggered(engine, tokenizer, [(p, exact(n, do_sample=False)) for p, n in zip(PROMPTS, lengths)])
        assert texts == [reference(untouched, tokenizer, p, n) for p, n in zip(PROMPTS, lengths)]
        traced.clear()
        with torch.inference_mode():
            decoder.decode(torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long), 64)
        assert traced == []
    finally:
        engine.close()


def test_a_vector_product_equals_the_linear_it_replaces():
    linear = torch.nn.Linear(48, 80)
    row = torch.randn(1, 1, 48)
    compiled = torch.compile(mpt_model._vector_product, fullgraph=True)
    torch.testing.assert_close(compiled(linear, row), torch.nn.functional.linear(row, linear.weight, linear.bias))
    assert compiled(linear, row).shape == (1, 1, 80)


def test_seeded_sampling_is_the_same_alone_and_batched(tiny):
    model, tokenizer = tiny
    engine = GenerationEngine(model, tokenizer, max_batch_size=4, compile_mode="none")
    try:
        mosaicml_default = exact(30, seed=21)  # do_sample, temperature 0.8, top_p 0.95
        penalised = exact(30, seed=22, temperature=1.2, top_k=40, repetition_penalty=1.3)
        alone = [run_staggered(engine, tokenizer, [(PROMPTS[0], p)])[0] for p in (mosaicml_default, penalised)]
        batched = run_staggered(engine, tokenizer, [(PROMPTS[1], exact(20, do_sample=False)),
                                                    (PROMPTS[0], mosaicml_default), (PROMPTS[0], penalised)])
        assert batched[1:] == alone
        assert alone[0] != run_staggered(engine, tokenizer, [(PROMPTS[0], exact(30, seed=23))])[0]
    finally:
        engine.close()


def test_top_k_and_top_p_keep_the_tokens_transformers_keeps():
    torch.manual_seed(0)
    scores = torch.randn(4, 300) * 3
    settings = [(0.8, 0, 0.95), (1.0, 20, 1.0), (0.5, 50, 0.7), (1.3, 5, 0.9)]
    rows = [RowSampler(SamplingParams(max_new_tokens=1, temperature=t, top_k=k, top_p=p, seed=1), [1], torch.device("cpu"))
            for t, k, p in settings]
    ordered, order = BatchSampler(torch.device("cpu")).filtered(rows, scores)
    for row, (temperature, top_k, top_p) in enumerate(settings):
        expected = TemperatureLogitsWarper(temperature)(None, scores[row:row + 1].clone())
        if top_k:
            expected = TopKLogitsWarper(top_k)(None, expected)
        if top_p < 1.0:
            expected = TopPLogitsWarper(top_p)(None, expected)
        kept = set(order[row][torch.isfinite(ordered[row])].tolist())
        assert kept == set(torch.nonzero(torch.isfinite(expected[0])).view(-1).tolist())
        assert 0 < len(kept) < 300


def test_min_new_tokens_holds_end_of_text_in_the_batched_sampler():
    rows = [RowSampler(SamplingParams(max_new_tokens=5, do_sample=False, min_new_tokens=2, eos_token_ids=(3,)),
                       [1], torch.device("cpu")) for _ in range(2)]
    logits = torch.zeros(2, 10)
    logits[:, 3] = 5.0
    tokens = BatchSampler(torch.device("cpu")).choose(rows, [1, 2], logits)
    assert tokens[0] != 3 and tokens[1] == 3


def _request(request_id: str, prompt_length: int, tokenizer) -> Request:
    params = SamplingParams(max_new_tokens=1, do_sample=False)
    return Request(request_id, [1] * prompt_length, params, lambda event: None,
                   RowSampler(params, [1], torch.device("cpu")), IncrementalText(tokenizer))


def test_scheduler_admits_by_free_slots_and_prefill_budget(tiny):
    scheduler = Scheduler(max_batch_size=4, max_queue_size=None, prefill_token_budget=25)
    requests = [_request(f"r{i}", 10, tiny[1]) for i in range(4)] + [_request("long", 60, tiny[1])]
    for request in requests:
        scheduler.add(request)
    admitted, dropped = scheduler.admit(free_slots=4, aborted=set())
    assert [r.request_id for r in admitted] == ["r0", "r1"] and not dropped  # 30 tokens > 25
    admitted, dropped = scheduler.admit(free_slots=1, aborted={"r3"})
    assert [r.request_id for r in admitted] == ["r2"] and [r.request_id for r in dropped] == ["r3"]
    admitted, _ = scheduler.admit(free_slots=4, aborted=set())
    assert [r.request_id for r in admitted] == ["long"]  # over the budget alone: still admitted


def test_a_failing_compile_falls_back_to_eager_and_says_why(tiny, untouched, monkeypatch):
    model, tokenizer = tiny

    def no_compiler(*args, **kwargs):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(decode_step_module.torch, "compile", no_compiler)
    engine = GenerationEngine(model, tokenizer, max_batch_size=2, compile_mode="freeze")
    try:
        step = engine.runner.step
        assert not step.compiled and "no C++ compiler" in step.fallback_reason
        [text] = run_staggered(engine, tokenizer, [(PROMPTS[2], exact(12, do_sample=False))])
        assert text == reference(untouched, tokenizer, PROMPTS[2], 12)
    finally:
        engine.close()


def test_auto_on_the_cpu_decodes_with_the_products_it_timed_faster(tiny):
    """"auto" on the CPU times torch's and oneDNN's packed products on the model's matrices at
    load and takes oneDNN's only when they win by the margin (torch's come compiled, with the
    work between products fused); the log line says which, and why."""
    model, tokenizer = tiny
    engine = GenerationEngine(model, tokenizer, max_batch_size=2, compile_mode="auto")
    try:
        step, times = engine.runner.step, engine.runner.step.kernel_times
        assert times.plain > 0 and times.packed > 0
        assert step.mode == ("prepack" if times.packed < cpu_kernels.PACKED_MARGIN * times.plain else "default")
        assert f"compile_mode {step.mode!r} (chosen by 'auto': " in engine.decode_step()
    finally:
        engine.close()


@pytest.mark.parametrize(("device", "packed_wins", "mode"), [
    ("cpu", True, "prepack"), ("cpu", False, "default"), ("cuda", True, "reduce-overhead")])
def test_auto_stands_for_a_mode_by_device_and_timed_products(device, packed_wins, mode):
    asked = []

    def timed() -> bool:
        asked.append(device)
        return packed_wins

    assert decode_step_module.resolve_mode("auto", torch.device(device), timed) == mode
    assert asked == ([device] if device == "cpu" else [])  # products are timed only where they decide
    asked.clear()
    assert decode_step_module.resolve_mode("none", torch.device(device), timed) == "none" and asked == []


def test_auto_packs_no_copy_the_memory_available_cannot_hold_twice(tmp_path):
    """oneDNN's packed products need a second copy of the matrices: "auto" takes them only
    when that copy is at most half the memory available."""
    linears = [torch.nn.Linear(256, 256, bias=False) for _ in range(4)]  # 1 MiB of matrices
    meminfo = tmp_path / "meminfo"
    for available_kb, fits in ((2048, True), (2047, False)):
        meminfo.write_text(f"MemTotal:       8000000 kB\nMemAvailable:   {available_kb} kB\n")
        assert cpu_kernels.packed_copy_fits(linears, str(meminfo)) == fits
    assert cpu_kernels.packed_copy_fits(linears, str(tmp_path / "absent"))  # not Linux: assumed to fit


def test_mpt_checkpoints_run_on_the_serving_forward_and_others_on_transformers(tiny):
    model, tokenizer = tiny
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=128, n_embd=32, n_layer=2,
                                      n_head=2)).eval()
    engines = [GenerationEngine(m, tokenizer, max_batch_size=3, compile_mode="none") for m in (model, gpt2)]
    try:
        assert isinstance(engines[0].runner, MptRunner) and isinstance(engines[1].runner, TransformersRunner)
        # learned positions and left padding: joining rows of different lengths stays exact
        lengths = [20, 12, 16]
        texts = run_staggered(engines[1], tokenizer, [(p, exact(n, do_sample=False)) for p, n in zip(PROMPTS, lengths)])
        assert texts == [reference(gpt2, tokenizer, p, n) for p, n in zip(PROMPTS, lengths)]
    finally:
        for engine in engines:
            engine.close()
