"""`./scripts/bench`: served throughput and latency (perf_analyzer) against in-process baselines."""
