"""The benchmark's target ratios and its Markdown report."""

from __future__ import annotations

import json
from pathlib import Path

from mosaic_serving.benchmark.stats import Measurement


def _point(points: list[Measurement], mode: str, concurrency: int) -> Measurement | None:
    return next((m for m in points if m.mode == mode and m.concurrency == concurrency), None)


def ratios(measurements: dict[str, list[Measurement]]) -> list[dict]:
    """Each target: what was compared, the measured figure, the target, and whether it holds."""
    checks = []

    def ratio(name, what, numerator, denominator, target):
        if numerator and denominator:
            value = numerator.outputs_per_s / denominator.outputs_per_s
            checks.append({"model": name, "check": what, "value": round(value, 2), "target": f">= {target}",
                           "met": value >= target})

    if "instructor" in measurements:
        points = measurements["instructor"]
        ratio("instructor", "served c16 / in-process batch 16", _point(points, "served", 16), _point(points, "in-process", 16), 0.8)
        ratio("instructor", "served c16 / served c1", _point(points, "served", 16), _point(points, "served", 1), 4)
    if "mpt" in measurements:
        points = measurements["mpt"]
        ratio("mpt", "tokens/s: 8 streams / 1 stream", _point(points, "served", 8), _point(points, "served", 1), 4)
        ratio("mpt", "tokens/s: 8 streams / in-process batch 8", _point(points, "served", 8), _point(points, "in-process", 8), 0.7)
        served, local = _point(points, "served", 1), _point(points, "in-process", 1)
        if served and local:
            gap = served.summary()["ttft_p50_ms"] - local.summary()["ttft_p50_ms"]
            checks.append({"model": "mpt", "check": "p50 TTFT at c1: served - in-process (ms)",
                           "value": round(gap, 2), "target": "<= 5", "met": gap <= 5})
    if "diffusion" in measurements:
        points = measurements["diffusion"]
        ratio("diffusion", "images/s: c4 / c1", _point(points, "served", 4), _point(points, "served", 1), 2)
    return checks


def write_report(report: dict, path: Path) -> None:
    lines = [f"# Benchmark: {report['size']} models", "", f"Machine: {report['machine']}", "", "## Targets", "",
             "| model | check | measured | target | met |", "|---|---|---|---|---|"]
    lines += [f"| {c['model']} | {c['check']} | {c['value']} | {c['target']} | {'yes' if c['met'] else 'no'} |"
              for c in report["ratios"]]
    for name, points in report["models"].items():
        lines += ["", f"## {name}", "",
                  "| mode | concurrency / batch | req/s | outputs/s | p50 ms | p99 ms | TTFT p50 | TTFT p99 | piece gap p50 | piece gap p99 |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for p in points:
            cells = [p["mode"], p["concurrency"], p["requests_per_s"], p["outputs_per_s"], p["latency_p50_ms"],
                     p["latency_p99_ms"], p["ttft_p50_ms"], p["ttft_p99_ms"], p["itl_p50_ms"], p["itl_p99_ms"]]
            lines.append("| " + " | ".join("-" if c is None else str(c) for c in cells) + " |")
        breakdowns = [f"- c{p['concurrency']}: {p['server_breakdown']}" for p in points if p["server_breakdown"]]
        if breakdowns:
            lines += ["", "Server-side split of request latency (perf_analyzer):", "", *breakdowns]
    path.write_text("\n".join(lines) + "\n")


def save_results(stem: Path, data: dict, markdown: str) -> None:
    """`stem`.json and `stem`.md side by side (the folder made if needed); the table printed."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(data, indent=2))
    stem.with_suffix(".md").write_text(markdown)
    print(markdown)
