"""MosaicML deployments served unchanged on a real Triton server.

Handler classes written like MosaicML's (tests/mosaicml_examples: MPTModelHandler(model_name,
...), HFInstructorHandler(model_name), StableDiffusionHandler() with predict(**inputs), on the
tiny models) are imported from MosaicML's own YAMLs, plus one handler whose packages clash with
the server's environment and run in an environment of its own (EXECUTION_ENV_PATH). They are
called over Triton's HTTP API and with MosaicML's own client, mcli.predict, through the
frontend's MosaicML routes.
"""

from __future__ import annotations

import base64
import contextlib
import importlib
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from PIL import Image
from tritonclient.grpc import model_config_pb2

from frontend_support import mcli_predict
from helpers import http_generate, http_generate_stream
from mosaic_serving.frontend import FrontendProcess
from mosaic_serving.mosaicml_import import main
from mosaic_serving.mosaicml_import.python_env import site_packages
from mosaic_serving.repository import default_model_repository
from mosaic_serving.triton.config import EXECUTION_ENV_PARAMETER
from mosaic_serving.launcher.server import LocalTritonServer, free_port

REPOSITORY = default_model_repository()
CPU_EXAMPLES = Path(__file__).resolve().parent / "mosaicml_examples"
YAMLS = CPU_EXAMPLES / "examples" / "inference-deployments"
GREEDY = {"max_new_tokens": 4, "do_sample": False}

# A deployment of MosaicML's shape whose handler needs packaging<22 (the server has 26), from
# pip_packages, and pyparsing 3.0.9 from the requirements.txt next to its module.
LEGACY_YAML = """\
name: legacy-versions
compute:
  gpus: 1
  gpu_type: a100_40gb
image: mosaicml/inference:0.1.40
replicas: 1
integrations:
- integration_type: git_repo
  git_repo: mosaicml/examples
  ssh_clone: false
- integration_type: pip_packages
  packages:
  - packaging==21.3
model:
  model_handler: examples.inference-deployments.legacy_versions.version_handler.VersionSortHandler
  model_parameters:
    reverse: true
"""


def import_deployment(*args) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main([str(arg) for arg in args])
    assert code == 0, out.getvalue()
    return out.getvalue()


@pytest.fixture(scope="module")
def imported(tmp_path_factory, tiny_mpt_path, tiny_instructor_path):
    """A model repository of four imported MosaicML deployments; the import reports by name."""
    work = tmp_path_factory.mktemp("mosaicml")
    repository = work / "repository"
    repository.mkdir()
    checkout = f"mosaicml/examples={CPU_EXAMPLES}"
    legacy_yaml = work / "legacy.yaml"
    legacy_yaml.write_text(LEGACY_YAML)
    env_cache = work / "envs"
    reports = {
        # MosaicML's YAML as it is; --weights stands in for the hub download of mosaicml/mpt-7b.
        "mpt-7b-custom": import_deployment(YAMLS / "mpt/mpt_7b_custom.yaml", "-o", repository / "mpt-7b-custom",
                                           "--git-repo", checkout, "--weights", tiny_mpt_path),
        # Its pip_packages (InstructorEmbedding, sentence-transformers 2.2.2) are what the real
        # handler needs; the CPU stand-in does not, so no environment is built (--no-env).
        "instructor-large": import_deployment(YAMLS / "instructor/instructor_large.yaml", "-o",
                                              repository / "instructor-large", "--git-repo", checkout,
                                              "--weights", tiny_instructor_path, "--no-env"),
        # No git_repo for the handler here (MosaicML's image had it): --include copies the package.
        "sd-o1ema": import_deployment(YAMLS / "mosaic_diffusion/mosaic_diffusion.yaml", "-o",
                                      repository / "sd-o1ema", "--include", CPU_EXAMPLES / "examples"),
        "legacy-versions": import_deployment(legacy_yaml, "-o", repository / "legacy-versions",
                                             "--git-repo", checkout, "--env-cache", env_cache),
    }
    return repository, reports, env_cache


@pytest.fixture(scope="module")
def mosaicml_server(imported, tmp_path_factory, tiny_diffusion_path):
    repository, _, _ = imported
    log_file = tmp_path_factory.mktemp("mosaicml-triton") / "tritonserver.log"
    with LocalTritonServer(repository, models=[p.name for p in repository.iterdir()],
                           env={"DIFFUSION_CHECKPOINT": str(tiny_diffusion_path)}, log_file=log_file) as server:
        yield server


def cpu_example(module: str, class_name: str):
    if str(CPU_EXAMPLES) not in sys.path:
        sys.path.insert(0, str(CPU_EXAMPLES))
    return getattr(importlib.import_module(f"examples.inference-deployments.{module}"), class_name)


def call(server, model: str, request: dict) -> tuple[int, object]:
    status, body = http_generate(server.http_url, model, {"request": json.dumps(request)})
    return status, json.loads(body["response"]) if status == 200 else body["error"]


def test_mpt_handler_predicts_and_streams_as_in_process(mosaicml_server, tiny_mpt_path):
    handler = cpu_example("mpt.mpt_handler", "MPTModelHandler")(str(tiny_mpt_path))
    [expected] = handler.predict([{"input": "Hello", "parameters": GREEDY}])
    assert expected.startswith("Hello") and len(expected) > len("Hello")

    assert call(mosaicml_server, "mpt-7b-custom", {"input": "Hello", "parameters": GREEDY}) == (200, expected)
    events = http_generate_stream(mosaicml_server.http_url, "mpt-7b-custom", {
        "request": json.dumps({"input": "Hello", "parameters": GREEDY}), "stream": True})
    pieces = [json.loads(event["response"]) for event in events if "response" in event]
    assert len(pieces) > 1 and "".join(pieces) == expected


def test_instructor_handler_embeds_as_in_process(mosaicml_server, tiny_instructor_path):
    pair = ["Represent the Science title:", "3D ActionSLAM: wearable person tracking"]
    handler = cpu_example("instructor.instructor_handler", "HFInstructorHandler")(str(tiny_instructor_path))
    [expected] = handler.predict([{"input": pair}])
    status, embedding = call(mosaicml_server, "instructor-large", {"input": pair})
    assert status == 200 and np.allclose(embedding, expected, atol=1e-6)
    assert abs(float(np.linalg.norm(embedding)) - 1) < 1e-5


def test_errors_from_the_class_name_it_and_the_model_keeps_serving(mosaicml_server):
    status, error = call(mosaicml_server, "instructor-large", {"text": "no input key"})
    assert status == 400  # Triton's generate endpoint answers every model error with 400
    assert "HFInstructorHandler raised KeyError in predict" in error and "input key not in model_requests" in error
    assert call(mosaicml_server, "instructor-large", {"input": ["Represent:", "still serving"]})[0] == 200


def test_diffusion_handler_takes_one_request_as_keywords(mosaicml_server):
    request = {"prompt": "a cute bunny", "height": 64, "width": 64, "num_inference_steps": 2,
               "num_images_per_prompt": 2, "seed": 7}
    status, images = call(mosaicml_server, "sd-o1ema", request)
    assert status == 200 and len(images) == 2  # base64 PNGs, as MosaicML's handler returns them
    for encoded in images:
        assert Image.open(io.BytesIO(base64.b64decode(encoded))).size == (64, 64)
    assert call(mosaicml_server, "sd-o1ema", request) == (200, images)  # the seed makes it repeatable


def test_handler_with_clashing_packages_runs_in_its_own_environment(imported, mosaicml_server):
    with pytest.raises(ImportError):  # the server's environment has packaging 24+: no LegacyVersion
        from packaging.version import LegacyVersion  # noqa: F401
    status, result = call(mosaicml_server, "legacy-versions", {"input": ["1.0", "not-a-version", "2.0.1"]})
    assert status == 200, result
    assert result == {"sorted": ["2.0.1", "1.0", "not-a-version"], "legacy": ["not-a-version"],
                      "packaging": "21.3", "pyparsing": "3.0.9"}


def test_the_environment_is_built_once_and_named_in_the_config(imported, tmp_path):
    repository, reports, env_cache = imported
    config = text_format.Parse((repository / "legacy-versions/config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    env = Path(config.parameters[EXECUTION_ENV_PARAMETER].string_value)
    assert env.parent == env_cache.resolve() and (env / "bin/activate").is_file()
    packages = site_packages(env)
    assert (packages / "mosaic_serving/triton/models/custom.py").is_file()
    assert not (packages / "torch").exists() and not (packages / "transformers").exists()
    report = reports["legacy-versions"]
    assert "packaging==21.3 pyparsing==3.0.9" in report and "requirements.txt" in report

    deployment = tmp_path / "deployment.yaml"
    deployment.write_text(LEGACY_YAML)
    again = import_deployment(deployment, "-o", tmp_path / "again", "--git-repo", f"mosaicml/examples={CPU_EXAMPLES}",
                              "--env-cache", env_cache)
    assert f"using the cached environment {env}" in again
    assert [p.name for p in env_cache.iterdir() if p.is_dir()] == [env.name]



# ---- MosaicML's own client (mosaicml-cli 0.8.3, unmodified) through the HTTP frontend ------


@pytest.fixture(scope="module")
def frontend(mosaicml_server, tmp_path_factory):
    log = tmp_path_factory.mktemp("mosaicml-frontend") / "frontend.log"
    with FrontendProcess(f"http://{mosaicml_server.http_url}", free_port(), log_file=log) as running:
        yield running


def deployment_url(frontend: FrontendProcess, model: str) -> str:
    return f"http://127.0.0.1:{frontend.port}/{model}"  # as mcli.predict takes a deployment's URL


def test_mcli_predict_and_stream_on_the_imported_mpt_handler(frontend, tiny_mpt_path):
    handler = cpu_example("mpt.mpt_handler", "MPTModelHandler")(str(tiny_mpt_path))
    expected = [handler.predict([{"input": prompt, "parameters": GREEDY}])[0] for prompt in ("Hello", "Goodbye")]
    url = deployment_url(frontend, "mpt-7b-custom")
    assert mcli_predict(url, {"inputs": ["Hello", "Goodbye"], "parameters": GREEDY}) == {"result": {"outputs": expected}}

    streamed = mcli_predict(url, {"inputs": ["Hello"], "parameters": GREEDY}, stream=True)["result"]
    assert len(streamed) > 1 and "".join(line["outputs"][0] for line in streamed) == expected[0]


def test_mcli_predict_on_the_imported_instructor_and_the_handler_in_its_own_environment(frontend):
    pair = ["Represent the Science title:", "3D ActionSLAM: wearable person tracking"]
    [embedding] = mcli_predict(deployment_url(frontend, "instructor-large"), {"inputs": [pair]})["result"]["outputs"]
    assert len(embedding) == 16 and abs(float(np.linalg.norm(embedding)) - 1) < 1e-5

    answer = mcli_predict(deployment_url(frontend, "legacy-versions"), {"inputs": [["1.0", "x-y"]]})
    [result] = answer["result"]["outputs"]
    assert (result["sorted"], result["packaging"]) == (["1.0", "x-y"], "21.3")


def test_mcli_predict_with_mosaicmls_diffusion_body(frontend):
    answer = mcli_predict(deployment_url(frontend, "sd-o1ema"), {
        "prompt": "a cute bunny", "height": 64, "width": 64, "num_inference_steps": 2})
    [png] = answer["result"]["outputs"]
    assert Image.open(io.BytesIO(base64.b64decode(png))).size == (64, 64)
