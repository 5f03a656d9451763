"""Custom Prometheus metrics of a model, served on Triton's metrics port (`/metrics`).

Uses the Python backend's metrics API (`pb_utils.MetricFamily`, Triton 2.51 has it). Every
metric carries `model` and `version` labels like Triton's own `nv_*` metrics; gauges also
carry `instance`, so the instances of one model (each its own stub process) never overwrite
each other's values. Families are created once per process and shared.
"""

from __future__ import annotations

from typing import Any, Callable

import triton_python_backend_utils as pb_utils

from mosaic_serving.errors import STATUS_CODES, status_code

_FAMILIES: dict[str, Any] = {}


def _family(name: str, description: str, kind: Any) -> Any:
    if name not in _FAMILIES:
        _FAMILIES[name] = pb_utils.MetricFamily(name=name, description=description, kind=kind)
    return _FAMILIES[name]


class ModelMetrics:
    """Counters and gauges labelled with one model instance (from `initialize`'s args)."""

    def __init__(self, args: dict[str, str]):
        self.labels = {"model": args.get("model_name", ""), "version": args.get("model_version", "")}
        self.instance = args.get("model_instance_name", "")
        self._metrics: dict[tuple, Any] = {}

    def counter(self, name: str, description: str, **labels: str) -> Any:
        """A counter (`.increment(n)`); same name and labels give the same metric."""
        return self._metric(name, description, pb_utils.MetricFamily.COUNTER, {**self.labels, **labels})

    def gauge(self, name: str, description: str) -> Any:
        """A gauge (`.set(value)`) of this instance."""
        labels = {**self.labels, "instance": self.instance}
        return self._metric(name, description, pb_utils.MetricFamily.GAUGE, labels)

    def _metric(self, name: str, description: str, kind: Any, labels: dict[str, str]) -> Any:
        key = (name, tuple(sorted(labels.items())))
        if key not in self._metrics:
            self._metrics[key] = _family(name, description, kind).Metric(labels=labels)
        return self._metrics[key]


def best_effort(update: Callable[[], Any]) -> None:
    """Run a metrics update; a failure is logged, never raised: metrics must not fail a request."""
    try:
        update()
    except Exception as error:  # noqa: BLE001
        pb_utils.Logger.log_warn(f"metrics update failed: {error}")


class BatchMetrics:
    """A dynamically batched model's handler calls, rows per call and failed requests.

    `mosaic_batch_rows_total / mosaic_batches_total` is the mean batch size: how well
    dynamic batching fills the stacked forward passes.
    """

    def __init__(self, metrics: ModelMetrics):
        self.batches = metrics.counter("mosaic_batches_total", "Handler calls, one per dynamically batched execute")
        self.rows = metrics.counter("mosaic_batch_rows_total", "Rows run by those handler calls")
        self.errors = {
            code: metrics.counter("mosaic_request_errors_total", "Requests answered with an error, by code", code=code)
            for code in STATUS_CODES
        }

    def batch(self, rows: int) -> None:
        """A handler call of `rows` rows."""

        def update() -> None:
            self.batches.increment(1)
            self.rows.increment(rows)

        best_effort(update)

    def error(self, error: Exception) -> None:
        best_effort(lambda: self.errors[status_code(error)].increment(1))
