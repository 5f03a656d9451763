"""The models' own Prometheus metrics, read from Triton's metrics port of the session server:
tokens, time to first token and decode batch sizes of `mpt`; batch sizes and errors of the
dynamically batched models; images of `diffusion`."""

from __future__ import annotations

import re
import time
import urllib.request

import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from helpers import grpc_stream, tensor
from reliability import metric


def rises(server, model: str, names: list, action) -> list[float]:
    """Run `action()`; how much each metric of `model` in `names` (a name, or (name, labels)) rose."""
    keys = [(name, {}) if isinstance(name, str) else name for name in names]
    before = [metric(server, name, model=model, **labels) for name, labels in keys]
    action()
    return [metric(server, name, model=model, **labels) - value for (name, labels), value in zip(keys, before)]


def test_mpt_counts_tokens_time_to_first_token_and_decode_batch_sizes(server):
    inputs = [tensor(grpcclient, "text_input", ["Once upon a time"], "BYTES"),
              tensor(grpcclient, "max_new_tokens", [12], "INT32"), tensor(grpcclient, "min_length", [12], "INT32"),
              tensor(grpcclient, "do_sample", [False], "BOOL"), tensor(grpcclient, "stream", [True], "BOOL")]
    names = ["mpt_generated_tokens_total", "mpt_time_to_first_token_seconds_count",
             "mpt_time_to_first_token_seconds_sum", "mpt_decode_steps_total", "mpt_decoded_rows_total"]
    began = time.monotonic()
    tokens, timed, first_seconds, steps, rows = rises(
        server, "mpt", names, lambda: grpc_stream(server.grpc_url, "mpt", inputs))
    assert tokens == 12 and timed == 1
    assert 0 < first_seconds < time.monotonic() - began
    assert steps == 11  # the prefill chooses the first token, then one decode step a token
    assert rows == 11  # alone in the batch: one row a step


def test_batched_models_count_batches_rows_and_errors(server):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    three_rows = [tensor(grpcclient, "instruction", [["Represent:"]] * 3, "BYTES"),
                  tensor(grpcclient, "text", [["one"], ["two"], ["three"]], "BYTES")]
    batches, rows = rises(server, "instructor", ["mosaic_batches_total", "mosaic_batch_rows_total"],
                          lambda: client.infer("instructor", three_rows))
    assert (batches, rows) == (1, 3)

    def empty_text():
        with pytest.raises(InferenceServerException, match="text"):
            client.infer("instructor", [tensor(grpcclient, "text", [[""]], "BYTES")])

    [errors] = rises(server, "instructor", [("mosaic_request_errors_total", {"code": "INVALID_ARGUMENT"})], empty_text)
    client.close()
    assert errors == 1


def test_diffusion_counts_images(server):
    fields = {"prompt": ("a red bicycle", "BYTES"), "height": (64, "INT32"), "width": (64, "INT32"),
              "num_inference_steps": (2, "INT32"), "num_images_per_prompt": (2, "INT32")}
    inputs = [tensor(grpcclient, name, [[value]], datatype) for name, (value, datatype) in fields.items()]
    client = grpcclient.InferenceServerClient(server.grpc_url)
    [images] = rises(server, "diffusion", ["diffusion_images_total"], lambda: client.infer("diffusion", inputs))
    client.close()
    assert images == 2


def test_counters_are_exposed_from_load_time(server):
    """Every counter is on the metrics page once its model has loaded, before any use."""
    with urllib.request.urlopen(f"http://{server.metrics_url}/metrics", timeout=10) as response:
        page = response.read().decode()
    for name in ("mpt_time_to_first_token_seconds_sum", "mpt_decode_steps_total", "mpt_decoded_rows_total",
                 "mosaic_batches_total", "mosaic_request_errors_total", "diffusion_images_total"):
        assert f"\n{name}{{" in page, name


def test_the_served_mpt_decodes_as_its_compile_mode_chose(server):
    """`mpt`'s default compile_mode ("auto") chooses its decode step at load and the log says
    which and why; on the CPU it is either compiled or oneDNN's packed products. A compile that
    fails inside the backend process (where Python runs embedded, in the server's locale)
    would leave it decoding eagerly, several times slower, with only a log line to say so."""
    [requests] = rises(server, "mpt", [("mpt_requests_total", {"finish_reason": "length"})],
                       lambda: grpc_stream(server.grpc_url, "mpt", [
                           tensor(grpcclient, "text_input", ["Once"], "BYTES"),
                           tensor(grpcclient, "max_new_tokens", [3], "INT32"),
                           tensor(grpcclient, "min_length", [3], "INT32")]))  # no early end-of-text
    assert requests == 1
    assert metric(server, "mpt_compile_fallback", model="mpt") == 0
    log = server.log_tail(lines=10_000)
    assert "decoding eagerly" not in log
    assert re.search(r"mpt: decode step: compile_mode '(default|prepack)' \(chosen by 'auto': ", log)
