"""Custom Prometheus metrics of a model, served on Triton's metrics port (`/metrics`).

Uses the Python backend's metrics API (`pb_utils.MetricFamily`, Triton 2.51 has it). Every
metric carries `model` and `version` labels like Triton's own `nv_*` metrics; gauges also
carry `instance`, so the instances of one model (each its own stub process) never overwrite
each other's values. Families are created once per process and shared.
"""

from __future__ import annotations

from typing import Any

import triton_python_backend_utils as pb_utils

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
