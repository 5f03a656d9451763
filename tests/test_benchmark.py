"""The benchmark tools: reading perf_analyzer's export, the target ratios, the engine vs
`model.generate` run (on the tiny shape here; `--shape mpt-7b` on a GPU host), and the engine
against its peers (here against `generate` alone: CTranslate2 and vLLM need venvs of their own)."""

import json

import pytest

from mosaic_serving.benchmark import mpt_engine, peers
from mosaic_serving.benchmark.perf import measurement_from_export
from mosaic_serving.benchmark.report import ratios
from mosaic_serving.benchmark.stats import Measurement

MS = 1_000_000  # nanoseconds


def test_export_counts_only_requests_inside_the_windows_and_times_each_response():
    export = {"experiments": [{
        "window_boundaries": [10 * MS, 110 * MS],
        "requests": [
            {"timestamp": 5 * MS, "response_timestamps": [20 * MS]},  # sent before the window
            {"timestamp": 20 * MS, "response_timestamps": [25 * MS, 27 * MS, 30 * MS],
             "response_outputs": [{}, {}, {"num_output_tokens": [3]}]},
            {"timestamp": 40 * MS, "response_timestamps": [44 * MS, 50 * MS, 60 * MS],
             "response_outputs": [{}, {}, {"num_output_tokens": [3]}]},
        ],
    }]}
    measurement = measurement_from_export(export, concurrency=2, output_count_key="num_output_tokens")
    assert measurement.requests == 2 and measurement.outputs == 6
    assert measurement.seconds == pytest.approx(0.050)  # window start to the last response
    assert measurement.first_response_ms == [5, 4]
    assert measurement.inter_response_ms == [2, 3, 6, 10]
    assert measurement.latency_ms == [10, 20]


def _point(mode, concurrency, outputs_per_s, first_ms=()):
    return Measurement(mode, concurrency, 1, 1.0, outputs_per_s, [1.0], list(first_ms))


def test_ratios_compare_the_right_points_against_their_targets():
    checks = ratios({"mpt": [
        _point("served", 1, 100, [12.0]), _point("served", 8, 450),
        _point("in-process", 1, 120, [10.0]), _point("in-process", 8, 700),
    ]})
    by_check = {c["check"]: c for c in checks}
    assert by_check["tokens/s: 8 streams / 1 stream"]["value"] == 4.5
    assert by_check["tokens/s: 8 streams / 1 stream"]["met"]
    assert by_check["tokens/s: 8 streams / in-process batch 8"]["value"] == pytest.approx(0.64)
    assert not by_check["tokens/s: 8 streams / in-process batch 8"]["met"]
    assert by_check["p50 TTFT at c1: served - in-process (ms)"]["value"] == 2.0


def test_engine_benchmark_runs_both_ways_and_agrees_with_generate(tmp_path):
    report = mpt_engine.main(["--shape", "tiny", "--batch-sizes", "1", "3", "--new-tokens", "8",
                              "--rounds", "1", "--device", "cpu", "--output", str(tmp_path)])
    assert report["greedy_engine_vs_generate"] == "identical"
    points = {(p["mode"], p["concurrency"]): p for p in report["points"]}
    assert set(points) == {("engine", 1), ("generate", 1), ("engine", 3), ("generate", 3)}
    assert points[("engine", 3)]["requests"] == 3 and points[("generate", 3)]["requests"] == 3
    engine = points[("engine", 3)]
    assert engine["ttft_p50_ms"] < engine["latency_p50_ms"]  # text streamed before the end
    # the floor: the tiny model's weights read once at the bandwidth measured in the run
    assert report["bandwidth_gb_s"] > 0
    assert report["floor_ms_per_token"] == pytest.approx(report["weights_bytes"] / report["bandwidth_gb_s"] / 1e6, rel=0.01)
    batch1 = points[("engine", 1)]
    per_token = (batch1["latency_p50_ms"] - batch1["ttft_p50_ms"]) / 7  # 8 tokens: 7 after the first
    assert report["engine_batch1_ms_per_token"] == pytest.approx(per_token, rel=0.01)
    assert report["engine_batch1_x_floor"] == pytest.approx(per_token / report["floor_ms_per_token"], rel=0.01)
    saved = json.loads((tmp_path / "mpt-engine-tiny.json").read_text())
    assert saved["points"] == report["points"]
    assert "| 3 |" in (tmp_path / "mpt-engine-tiny.md").read_text()


def test_peers_benchmark_times_each_engine_in_its_own_process_and_says_how_the_engine_decoded(tmp_path):
    report = peers.main(["--size", "tiny", "--no-vllm", "--no-ctranslate2", "--rounds", "1", "--new-tokens", "3",
                         "--compile-mode", "none", "--output", str(tmp_path)])
    rows = {row["engine"]: row for row in report["engines"]}
    assert list(rows) == ["engine", "generate"]
    assert rows["generate"]["greedy_vs_engine"] == "identical"
    assert rows["engine"]["decode_step"] == "decode step: compile_mode 'none'"
    assert rows["generate"]["decode_step"] is None
    assert all(row["tokens_per_s_b8"] > 0 and row["first_token_ms"] > 0 for row in rows.values())
    assert report["skipped"] == {"vllm": "--no-vllm", "ctranslate2": "--no-ctranslate2"}
    assert [row["batch"] for row in report["engine_sampling"]] == [8, 32]
    markdown = (tmp_path / "peers-tiny.md").read_text()
    assert "- engine: decode step: compile_mode 'none'" in markdown
    assert "| ctranslate2 | not run: --no-ctranslate2 |" in markdown
    assert json.loads((tmp_path / "peers-tiny.json").read_text())["engines"] == report["engines"]


def test_random_model_only_chooses_tokens_the_tokenizer_can_decode():
    import torch

    model = mpt_engine.build_random_model("tiny", torch.device("cpu"), torch.float32, tokenizer_size=100)
    assert model.lm_head.weight is model.transformer.wte.weight  # tied, as in mpt-7b
    assert model.lm_head.weight.shape[0] == mpt_engine.SHAPES["tiny"]["vocab_size"]
    assert model.lm_head.weight[100:].abs().sum() == 0
    assert model.lm_head.weight[:100].abs().sum() > 0


def test_gpu_check_script_runs_the_engine_benchmark_and_keeps_its_log(tmp_path):
    """`scripts/gpu-check` is what a GPU host runs once; here on the CPU with the tiny shape."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "gpu-check"
    result = subprocess.run([str(script), str(tmp_path), "--shape", "tiny", "--device", "cpu", "--batch-sizes", "1",
                             "2", "--new-tokens", "4", "--rounds", "1"],
                            env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    log = (tmp_path / "gpu-check.log").read_text()
    assert "| transformers" in log and "engine loaded in" in log
    report = json.loads((tmp_path / "mpt-engine-tiny.json").read_text())
    assert [p["concurrency"] for p in report["points"]] == [1, 1, 2, 2]
    assert "x the floor" in (tmp_path / "mpt-engine-tiny.md").read_text()


def test_tree_cpu_seconds_counts_a_process_and_its_descendants():
    """The frontend benchmark's CPU accounting: a process that only waits for its child, which
    has burnt CPU, is charged for the child's time too."""
    import subprocess
    import sys
    import time

    import psutil

    from mosaic_serving.launcher.procfs import tree_cpu_seconds

    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\ntime.sleep(30)"
    parent = subprocess.Popen([sys.executable, "-c", f"import subprocess, sys; subprocess.run([sys.executable, '-c', {burn!r}])"])
    try:
        deadline = time.monotonic() + 30
        while tree_cpu_seconds(parent.pid) < 0.3 and time.monotonic() < deadline:
            time.sleep(0.05)
        own = sum(psutil.Process(parent.pid).cpu_times()[:2])
        assert tree_cpu_seconds(parent.pid) - own >= 0.25
    finally:
        for process in psutil.Process(parent.pid).children(recursive=True):
            process.kill()
        parent.kill()
        parent.wait()
