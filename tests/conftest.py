"""Shared fixtures: the tiny models (built once into the model cache) and a real server."""

from pathlib import Path

import pytest

from mosaic_serving.repository import default_model_repository
from mosaic_serving.serve import ALL_MODELS, tiny_model_env
from mosaic_serving.tiny_models import tiny_model_path
from mosaic_serving.launcher.server import LocalTritonServer


@pytest.fixture(scope="session")
def tiny_mpt_path():
    return tiny_model_path("mpt")


@pytest.fixture(scope="session")
def tiny_instructor_path():
    return tiny_model_path("instructor")


@pytest.fixture(scope="session")
def tiny_diffusion_path():
    return tiny_model_path("diffusion")


REPOSITORY = default_model_repository()


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """One real Triton server for the test session, on free ports, serving the tiny models.
    `mpt` takes requests of up to 8000 new tokens (the tiny MPT's context is 8192), which the
    cancellation tests need.

    Its log stays in pytest's temporary directory; the path is printed when a test fails.
    """
    log_file = tmp_path_factory.mktemp("triton") / "tritonserver.log"
    _server_logs.append(log_file)
    env = {**tiny_model_env({}), "MPT_MAX_NEW_TOKENS": "8000"}
    with LocalTritonServer(REPOSITORY, models=ALL_MODELS, env=env, log_file=log_file) as running:
        yield running


_server_logs: list[Path] = []


def pytest_terminal_summary(terminalreporter, exitstatus):
    if exitstatus != 0 and _server_logs:
        terminalreporter.write_line(f"Triton server log: {_server_logs[0]}")
