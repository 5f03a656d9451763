"""Summaries of request timings, the same for served and in-process measurements."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Measurement:
    """One (model, concurrency or batch size) point. Times in milliseconds."""

    mode: str  # "served" or "in-process"
    concurrency: int
    requests: int
    seconds: float
    outputs: int  # embeddings, images or generated tokens
    latency_ms: list[float] = field(repr=False)
    first_response_ms: list[float] = field(default_factory=list, repr=False)
    inter_response_ms: list[float] = field(default_factory=list, repr=False)
    server_breakdown: str = ""  # perf_analyzer's server-side split: queue, compute, overhead

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.seconds

    @property
    def outputs_per_s(self) -> float:
        return self.outputs / self.seconds

    def summary(self) -> dict:
        return {
            "mode": self.mode,
            "concurrency": self.concurrency,
            "requests": self.requests,
            "requests_per_s": round(self.requests_per_s, 2),
            "outputs_per_s": round(self.outputs_per_s, 2),
            "latency_p50_ms": percentile(self.latency_ms, 50),
            "latency_p99_ms": percentile(self.latency_ms, 99),
            "ttft_p50_ms": percentile(self.first_response_ms, 50),
            "ttft_p99_ms": percentile(self.first_response_ms, 99),
            "itl_p50_ms": percentile(self.inter_response_ms, 50),
            "itl_p99_ms": percentile(self.inter_response_ms, 99),
            "server_breakdown": self.server_breakdown,
        }


def percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if values else None
