"""The PyPI Triton server starts, serves a Python-backend model and stops without leftovers."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import numpy as np
import psutil
import pytest

pytest.importorskip("pytriton")
grpcclient = pytest.importorskip("tritonclient.grpc")
httpclient = pytest.importorskip("tritonclient.http")

from mosaic_serving.launcher.server import LocalTritonServer, ServerStartError  # noqa: E402

ECHO_MODEL = textwrap.dedent(
    """
    import os
    import numpy as np
    import triton_python_backend_utils as pb_utils

    class TritonPythonModel:
        def initialize(self, args):
            self.tag = os.environ.get("ECHO_TAG", "").encode()

        def execute(self, requests):
            responses = []
            for request in requests:
                data = pb_utils.get_input_tensor_by_name(request, "INPUT").as_numpy()
                tag = np.array([self.tag], dtype=object)
                responses.append(pb_utils.InferenceResponse(
                    [pb_utils.Tensor("OUTPUT", data), pb_utils.Tensor("TAG", tag)]))
            return responses
    """
)
ECHO_CONFIG = textwrap.dedent(
    """
    backend: "python"
    max_batch_size: 0
    input [{ name: "INPUT" data_type: TYPE_FP32 dims: [ -1 ] }]
    output [{ name: "OUTPUT" data_type: TYPE_FP32 dims: [ -1 ] },
            { name: "TAG" data_type: TYPE_STRING dims: [ 1 ] }]
    instance_group [{ count: 1 kind: KIND_AUTO }]
    """
)
BROKEN_MODEL = textwrap.dedent(
    """
    class TritonPythonModel:
        def initialize(self, args):
            raise RuntimeError("broken on purpose")
        def execute(self, requests):
            return []
    """
)


def _write_model(repo: Path, name: str, model_py: str, config: str = ECHO_CONFIG) -> None:
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "1" / "model.py").write_text(model_py)
    (repo / name / "config.pbtxt").write_text(config)


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    _write_model(repo, "echo", ECHO_MODEL)
    _write_model(repo, "broken", BROKEN_MODEL)
    return repo


def _group_members(pgid: int) -> list[psutil.Process]:
    """Live (non-zombie) processes of a process group."""
    members = []
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                members.append(proc)
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return members


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_serves_and_stops_cleanly(repo: Path, tmp_path: Path) -> None:
    server = LocalTritonServer(
        repo, models=["echo"], env={"ECHO_TAG": "from-env"}, log_file=tmp_path / "server.log"
    )
    with server:
        pid = server.process.pid
        stubs = [p for p in psutil.Process(pid).children(recursive=True)]
        assert [p.name() for p in stubs] == ["triton_python_backend_stub"]

        http = httpclient.InferenceServerClient(server.http_url)
        grpc = grpcclient.InferenceServerClient(server.grpc_url)
        try:
            assert http.is_server_ready() and grpc.is_server_ready()
            assert grpc.is_model_ready("echo")
            assert not http.is_model_ready("broken")  # explicit mode: only asked models load

            data = np.arange(4, dtype=np.float32)
            inp = grpcclient.InferInput("INPUT", list(data.shape), "FP32")
            inp.set_data_from_numpy(data)
            result = grpc.infer("echo", [inp])
            np.testing.assert_array_equal(result.as_numpy("OUTPUT"), data)
            assert result.as_numpy("TAG")[0] == b"from-env"
        finally:
            http.close()
            grpc.close()

    assert server.process is None
    assert _gone(pid)
    assert all(_gone(p.pid) for p in stubs)
    assert _group_members(pid) == []


def test_failed_start_raises_with_log_tail(repo: Path, tmp_path: Path) -> None:
    server = LocalTritonServer(repo, models=["broken"], log_file=tmp_path / "server.log")
    with pytest.raises(ServerStartError, match="broken on purpose"):
        server.start()
    assert server.process is None
