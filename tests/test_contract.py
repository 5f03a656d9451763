"""Each model declares its tensors once: the served configuration carries them, config.pbtxt
does not repeat them, a disagreeing config.pbtxt is refused, and the client's calls match."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from mosaic_client.calls import IMAGE_FIELDS, embedding_call, generation_call, handler_call, image_call
from mosaic_serving.repository import default_model_repository
from mosaic_serving.serve import ALL_MODELS
from mosaic_serving.launcher.server import LocalTritonServer, ServerStartError

REPOSITORY = default_model_repository()
TRITON_TYPE = {"BYTES": "TYPE_STRING", "BOOL": "TYPE_BOOL", "INT32": "TYPE_INT32", "INT64": "TYPE_INT64",
               "FP32": "TYPE_FP32"}


def served_inputs(server: LocalTritonServer, model: str) -> dict[str, model_config_pb2.ModelInput]:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        config = client.get_model_config(model).config
    finally:
        client.close()
    assert config.output, f"{model} serves no outputs"
    return {tensor.name: tensor for tensor in config.input}


@pytest.mark.parametrize("model", ALL_MODELS)
def test_config_pbtxt_leaves_the_tensors_to_the_model(model: str) -> None:
    config = text_format.Parse((REPOSITORY / model / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert not config.input and not config.output


def test_the_served_tensors_are_the_declared_ones(server: LocalTritonServer) -> None:
    mpt = served_inputs(server, "mpt")
    assert model_config_pb2.DataType.Name(mpt["seed"].data_type) == "TYPE_UINT64"
    assert list(mpt["stop"].dims) == [-1] and mpt["stop"].optional
    assert not mpt["text_input"].optional
    assert set(served_inputs(server, "instructor")) == {"instruction", "text"}
    assert set(served_inputs(server, "custom_example")) == {"request", "stream"}


def _check_call(server: LocalTritonServer, call) -> None:
    """Every tensor the client sends is served under its name and type; none required is missing."""
    served = served_inputs(server, call.model)
    sent = {name: datatype for name, _, datatype in call.arrays()}
    for name, datatype in sent.items():
        assert name in served, f"client sends {call.model}.{name}, which the model does not take"
        assert model_config_pb2.DataType.Name(served[name].data_type) == TRITON_TYPE[datatype], name
    missing = [name for name, tensor in served.items() if not tensor.optional and name not in sent]
    assert missing == []


def test_the_clients_calls_match_the_served_tensors(server: LocalTritonServer) -> None:
    _check_call(server, generation_call("mpt", "Hello", {"max_tokens": 4}, stream=True))
    _check_call(server, embedding_call("instructor", ("Represent:", "text")))
    every_image_field = {name: 1 if datatype != "BYTES" else "x" for name, datatype in IMAGE_FIELDS.items()}
    _check_call(server, image_call("diffusion", "a cube", every_image_field))
    _check_call(server, handler_call("custom_example", {"input": "a b"}, stream=False))


def test_a_config_pbtxt_that_disagrees_with_the_declaration_is_refused(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(REPOSITORY / "custom_example", repo / "custom_example")
    config = repo / "custom_example" / "config.pbtxt"
    config.write_text(config.read_text() + '\ninput [{ name: "request" data_type: TYPE_INT32 dims: [ 1 ] }]\n')
    server = LocalTritonServer(repo, models=["custom_example"], log_file=tmp_path / "server.log")
    with pytest.raises(ServerStartError, match="input 'request' has data_type 'TYPE_INT32', but the model declares"):
        server.start()
