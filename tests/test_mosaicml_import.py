"""`python -m mosaic_serving.mosaicml_import`: MosaicML deployment YAMLs to model repository entries.

YAMLs are written in MosaicML's format (their examples repository and mcli's schema); the
configs written are read back with Triton's own ModelConfig proto, and one repository of
imported models is loaded and served by a real Triton server.
"""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
import yaml
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

from helpers import grpc_stream, http_generate, tensor, text
from mosaic_serving import mosaicml_import
from mosaic_serving.mosaicml_import import BUILTINS, accepted_parameters, main, parameter_text
from mosaic_serving.repository import default_model_repository
from mosaic_serving.triton.config import ADAPTER_PARAMETERS, EXECUTION_ENV_PARAMETER, config_parameters, parse_value
from mosaic_serving.launcher.server import LocalTritonServer

REPOSITORY = default_model_repository()
# CPU equivalents of MosaicML's handlers, laid out like mosaicml/examples, beside MosaicML's YAMLs.
CPU_EXAMPLES = Path(__file__).resolve().parent / "mosaicml_examples"
MOSAICML_YAMLS = CPU_EXAMPLES / "examples" / "inference-deployments"
KIND = model_config_pb2.ModelInstanceGroup


def write_yaml(tmp_path: Path, text_: str, name: str = "deployment.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text_))
    return path


def run_import(capsys, *args) -> tuple[int, str, str]:
    code = main([str(arg) for arg in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def read_config(model_dir: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse((model_dir / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


def handler_kwargs(config: model_config_pb2.ModelConfig, environ=None) -> dict:
    """The handler kwargs the adapter builds from this config (as Triton passes it, JSON)."""
    as_json = json_format.MessageToDict(config, preserving_proto_field_name=True)
    return config_parameters(as_json, environ or {})


# ---- built-in handlers ---------------------------------------------------------------------


def test_mosaicml_handler_class_is_served_as_it_is(tmp_path, capsys):
    """MosaicML's own mpt_7b_custom.yaml, its handler code from a local checkout."""
    deployment = MOSAICML_YAMLS / "mpt" / "mpt_7b_custom.yaml"
    output = tmp_path / "repo" / "mpt-7b-custom"
    values = tmp_path / "values.yaml"
    code, out, err = run_import(capsys, deployment, "--output", output, "--templates", REPOSITORY,
                                "--values-file", values, "--git-repo", f"mosaicml/examples={CPU_EXAMPLES}")
    assert code == 0, err

    config = read_config(output)
    template = read_config(REPOSITORY / "custom_example")
    assert config.input == template.input and config.output == template.output
    assert handler_kwargs(config) == {
        "handler": "examples.inference-deployments.mpt.mpt_handler.MPTModelHandler",
        "python_path": [str(CPU_EXAMPLES)],
        "model_name": "mosaicml/mpt-7b",  # the hub id, as MosaicML's downloader left it for the class
    }
    assert EXECUTION_ENV_PARAMETER not in config.parameters  # no packages asked for: the server's environment
    [group] = config.instance_group  # compute.gpus: 1 becomes KIND_AUTO, so the entry loads on a CPU too
    assert (group.kind, group.count, list(group.gpus)) == (KIND.KIND_AUTO, 1, [])
    assert (output / "1/model.py").read_text() == (REPOSITORY / "custom_example/1/model.py").read_text()

    assert yaml.safe_load(values.read_text()) == {"replicaCount": 1, "gpusPerReplica": 1}
    for reported in ("replicas:  1", "image mosaicml/inference:0.1.16", "command is not run",
                     "export PYTHONPATH=$PYTHONPATH:/code/examples", "df65ce9448f2", "compute.instance", "KIND_AUTO"):
        assert reported in out, reported
    assert "trust_remote_code" not in out  # the class decides that itself


def test_a_git_repo_handler_needs_its_checkout(tmp_path, capsys):
    deployment = MOSAICML_YAMLS / "mpt" / "mpt_7b_custom.yaml"
    code, _, err = run_import(capsys, deployment, "-o", tmp_path / "m", "--templates", REPOSITORY)
    assert code == 2 and "--git-repo mosaicml/examples=DIR" in err, err
    code, _, err = run_import(capsys, deployment, "-o", tmp_path / "m", "--templates", REPOSITORY,
                              "--git-repo", "mosaicml/examples")
    assert code == 2 and "OWNER/NAME=DIR" in err, err
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("path", sorted(MOSAICML_YAMLS.rglob("*.yaml")), ids=lambda path: path.name)
def test_every_mosaicml_example_yaml_imports(tmp_path, capsys, path):
    deployment = yaml.safe_load(path.read_text())
    output = tmp_path / deployment["name"]
    code, out, err = run_import(capsys, path, "-o", output, "--templates", REPOSITORY, "--no-env",
                                "--git-repo", f"mosaicml/examples={CPU_EXAMPLES}",
                                "--include", CPU_EXAMPLES / "examples")
    assert code == 0, err
    config = read_config(output)
    [group] = config.instance_group
    assert group.kind == KIND.KIND_AUTO
    kwargs = handler_kwargs(config)
    if "default_model" in deployment:
        assert "handler" not in kwargs and config.backend == "python"
        assert ("trust_remote_code" in out) == deployment["default_model"]["model_type"].startswith("mpt")
    else:
        assert kwargs["handler"] == deployment["model"]["model_handler"]
        assert "trust_remote_code" not in out
    packages = [package for item in deployment.get("integrations", []) for package in item.get("packages", [])]
    if packages:
        assert f"packages:  {' '.join(packages)}" in out and "not built (--no-env)" in out
    for key in ("image", "command"):
        if deployment.get(key):
            assert f"{key} " in out


def test_requirements_come_from_the_yaml_the_requirements_txt_and_the_command_line(tmp_path, capsys):
    deployment = write_yaml(tmp_path, """\
        name: versions
        integrations:
        - {integration_type: git_repo, git_repo: mosaicml/examples}
        - {integration_type: pip_packages, packages: [packaging==21.3]}
        model: {model_handler: examples.inference-deployments.legacy_versions.version_handler.VersionSortHandler}
    """)
    checkout = f"mosaicml/examples={CPU_EXAMPLES}"
    code, out, err = run_import(capsys, deployment, "-o", tmp_path / "a", "--templates", REPOSITORY, "--no-env",
                                "--git-repo", checkout, "--pip-package", "six==1.16.0")
    assert code == 0, err
    assert "packages:  packaging==21.3 pyparsing==3.0.9 six==1.16.0 (from integrations pip_packages, " in out
    assert "legacy_versions/requirements.txt, --pip-package)" in out
    code, out, err = run_import(capsys, deployment, "-o", tmp_path / "b", "--templates", REPOSITORY, "--no-env",
                                "--git-repo", checkout, "--ignore-requirements-txt")
    assert code == 0 and "packages:  packaging==21.3 (from integrations pip_packages)" in out, err
    code, _, err = run_import(capsys, MOSAICML_YAMLS / "mpt/mpt_7b.yaml", "-o", tmp_path / "c", "--templates",
                              REPOSITORY, "--pip-package", "six")
    assert code == 2 and "built in" in err


def test_instance_kind_gpu_pins_the_deployments_gpus(tmp_path, capsys):
    deployment = write_yaml(tmp_path, """\
        name: instructor-large
        gpu_num: 2
        gpu_type: a100_40gb
        replicas: 1
        batching: {max_batch_size: 32, max_timeout_ms: 5}
        env_variables: {TOKENIZERS_PARALLELISM: "false"}
        model:
          download_parameters: {hf_path: hkunlp/instructor-large}
          model_handler: mosaic_serving.handlers.instructor.HFInstructorHandler
          model_parameters: {model_name: hkunlp/instructor-large}
    """)
    output = tmp_path / "repo" / "instructor-large"
    values = tmp_path / "values.yaml"
    code, out, err = run_import(capsys, deployment, "-o", output, "--templates", REPOSITORY, "--values-file", values,
                                "--instance-kind", "gpu")
    assert code == 0, err
    config = read_config(output)
    assert config.max_batch_size == 32
    assert config.dynamic_batching.max_queue_delay_microseconds == 5000
    assert handler_kwargs(config)["model_name_or_path"] == "hkunlp/instructor-large"
    [group] = config.instance_group
    assert (group.kind, list(group.gpus)) == (KIND.KIND_GPU, [0, 1])
    assert yaml.safe_load(values.read_text())["extraEnv"] == [{"name": "TOKENIZERS_PARALLELISM", "value": "false"}]
    assert "gpu_type" in out and "TOKENIZERS_PARALLELISM" in out and "trust_remote_code" not in out


def test_our_mpt_handler_keeps_its_parameters(tmp_path, capsys):
    deployment = write_yaml(tmp_path, """\
        name: mpt-7b
        compute: {gpus: 1}
        batching: {max_batch_size: 16, max_timeout_ms: 10}
        model:
          download_parameters: {hf_path: mosaicml/mpt-7b}
          model_handler: mosaic_serving.handlers.mpt.MPTModelHandler
          model_parameters: {model_name: mosaicml/mpt-7b, attn_impl: triton}
    """)
    code, out, err = run_import(capsys, deployment, "-o", tmp_path / "mpt-7b", "--templates", REPOSITORY)
    assert code == 0, err
    config = read_config(tmp_path / "mpt-7b")
    kwargs = handler_kwargs(config)
    assert (kwargs["model_name_or_path"], kwargs["max_batch_size"], kwargs["dtype"]) == ("mosaicml/mpt-7b", 16, "auto")
    assert handler_kwargs(config, {"MPT_DTYPE": "float16"})["dtype"] == "float16"
    assert "attn_impl" not in kwargs and "attn_impl" in out and "max_timeout_ms" in out
    assert config.model_transaction_policy.decoupled


def test_our_class_paths_and_parameter_names(tmp_path, capsys):
    deployment = write_yaml(tmp_path, """\
        name: sd2
        replicas: 2
        model:
          model_handler: mosaic_serving.handlers.diffusion.StableDiffusionHandler
          model_parameters:
            model_name_or_path: /models/sd2
            dtype: float16
            max_inference_steps: 60
    """)
    output = tmp_path / "repo" / "sd2"
    code, out, err = run_import(capsys, deployment, "-o", output, "--templates", REPOSITORY)
    assert code == 0, err
    config = read_config(output)
    kwargs = handler_kwargs(config)
    assert (kwargs["model_name_or_path"], kwargs["dtype"], kwargs["max_inference_steps"]) == ("/models/sd2", "float16", 60)
    [group] = config.instance_group  # no GPUs asked for: KIND_AUTO, as the built-in models
    assert group.kind == KIND.KIND_AUTO and not group.gpus
    assert (output / "1/model.py").read_text() == (REPOSITORY / "diffusion/1/model.py").read_text()
    assert "trust_remote_code" not in out  # only MosaicML's own handlers trusted remote code


def test_default_output_is_model_repository_slash_name(tmp_path, capsys, monkeypatch):
    deployment = write_yaml(tmp_path, """\
        name: mpt-7b-instruct
        compute: {gpus: 1}
        default_model: {model_type: mpt-7b-instruct}
    """)
    monkeypatch.chdir(tmp_path)
    code, _, err = run_import(capsys, deployment, "--templates", REPOSITORY)
    assert code == 0, err
    config = read_config(tmp_path / "model_repository" / "mpt-7b-instruct")
    assert handler_kwargs(config)["model_name_or_path"] == "mosaicml/mpt-7b-instruct"


@pytest.mark.parametrize(
    "default_model, weights, model",
    [
        ({"model_type": "mpt-30b-chat"}, "mosaicml/mpt-30b-chat", "mpt"),
        ({"model_type": "llama2-7b-chat"}, "meta-llama/Llama-2-7b-chat-hf", "mpt"),
        ({"model_type": "instructor-xl"}, "hkunlp/instructor-xl", "instructor"),
        ({"model_type": "my-llm", "checkpoint_path": {"hf_path": "me/my-llm"}}, "me/my-llm", "mpt"),
    ],
)
def test_default_models(default_model, weights, model):
    plan = mosaicml_import.plan_import({"name": "m", "default_model": default_model})
    assert (plan.weights, plan.template) == (weights, model)


def test_weights_option_wins_and_object_store_paths_need_it(tmp_path, capsys):
    deployment = write_yaml(tmp_path, """\
        name: mpt-s3
        model:
          download_parameters: {s3_path: s3://bucket/mpt-7b}
          model_handler: mosaic_serving.handlers.mpt.MPTModelHandler
    """)
    code, _, err = run_import(capsys, deployment, "-o", tmp_path / "a", "--templates", REPOSITORY)
    assert code == 2 and "s3://bucket/mpt-7b" in err and "--weights" in err
    assert not (tmp_path / "a").exists()
    code, _, err = run_import(capsys, deployment, "-o", tmp_path / "a", "--templates", REPOSITORY,
                              "--weights", "/models/mpt-7b")
    assert code == 0, err
    assert handler_kwargs(read_config(tmp_path / "a"))["model_name_or_path"] == "/models/mpt-7b"


@pytest.mark.parametrize(
    "model, message",
    [
        ({"model_handler": "mosaic_serving.handlers.mpt.MPTModelHandler", "model_parameters": {"beams": 4}},
         "model_parameters.beams is not a parameter"),
        ({"model_parameters": {"model_name": "x"}}, "model.model_handler is missing"),
        ({"model_handler": "NoModule"}, "'package.module.Class'"),
        ({"model_handler": "mosaic_serving.handlers.mpt.MPTModelHandler",
          "model_parameters": {"model_name": "a", "model_name_or_path": "b"}}, "twice"),
    ],
)
def test_bad_deployments_are_refused_with_a_reason(tmp_path, capsys, model, message):
    deployment = tmp_path / "d.yaml"
    deployment.write_text(yaml.safe_dump({"name": "bad", "model": model}))
    code, _, err = run_import(capsys, deployment, "-o", tmp_path / "bad", "--templates", REPOSITORY)
    assert code == 2 and message in err, err
    assert not (tmp_path / "bad").exists()


def test_deployment_name_must_make_a_model_name(tmp_path, capsys, monkeypatch):
    deployment = write_yaml(tmp_path, """\
        name: team/mpt-7b
        default_model: {model_type: mpt-7b}
    """)
    monkeypatch.chdir(tmp_path)
    code, _, err = run_import(capsys, deployment, "--templates", REPOSITORY)
    assert code == 2 and "--output" in err
    assert not (tmp_path / "model_repository").exists()


def test_existing_output_needs_force_and_builtin_models_are_never_replaced(tmp_path, capsys):
    deployment = write_yaml(tmp_path, """\
        name: x
        model: {model_handler: word_counter.WordCountHandler}
    """)
    assert run_import(capsys, deployment, "-o", tmp_path / "x", "--templates", REPOSITORY)[0] == 0
    code, _, err = run_import(capsys, deployment, "-o", tmp_path / "x", "--templates", REPOSITORY)
    assert code == 2 and "--force" in err
    assert run_import(capsys, deployment, "-o", tmp_path / "x", "--templates", REPOSITORY, "--force")[0] == 0
    code, _, err = run_import(capsys, deployment, "-o", REPOSITORY / "mpt", "--force")
    assert code == 2 and "built-in" in err
    assert (REPOSITORY / "mpt/config.pbtxt").read_text().count("MPT_MODEL") == 1


# ---- custom handlers -----------------------------------------------------------------------


def test_custom_handler_parameters_keep_their_types(tmp_path, capsys):
    parameters = {"lowercase": True, "top": 8, "label": "8", "flag_text": "true", "ratio": 0.5,
                  "stops": ["a", "b"], "options": {"k": [1, 2]}, "name": "plain text", "nothing": None}
    deployment = tmp_path / "d.yaml"
    deployment.write_text(yaml.safe_dump({
        "name": "counter", "gpu_num": 1, "replicas": 2,
        "model": {"model_handler": "my_pkg.handlers.Counter", "model_parameters": parameters,
                  "download_parameters": {"hf_path": "me/counter"}},
    }))
    code, out, err = run_import(capsys, deployment, "-o", tmp_path / "counter", "--templates", REPOSITORY)
    assert code == 0, err
    config = read_config(tmp_path / "counter")
    assert handler_kwargs(config) == {"handler": "my_pkg.handlers.Counter", **parameters}
    template = text_format.Parse((REPOSITORY / "custom_example/config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert config.input == template.input and config.output == template.output
    assert (tmp_path / "counter/1/model.py").read_text() == (REPOSITORY / "custom_example/1/model.py").read_text()
    assert not (tmp_path / "counter/1/word_counter.py").exists()  # the example handler is not copied
    assert "hf_path me/counter is not named by any model_parameters" in out


@pytest.mark.parametrize(
    "download, options, expected, message",
    [
        ({"hf_path": "me/llm"}, [], "me/llm", None),  # a hub id stays: the class downloads it, as on MosaicML
        ({"hf_path": "me/llm"}, ["--weights", "/models/llm"], "/models/llm", "replaced by --weights /models/llm"),
        ({"s3_path": "s3://bucket/llm"}, ["--weights", "/models/llm"], "/models/llm", "replaced by --weights"),
        ({"gcp_path": "gs://bucket/llm"}, [], None, "object-store downloads are not run here"),
    ],
)
def test_custom_handler_download_parameters(tmp_path, capsys, download, options, expected, message):
    source = next(iter(download.values()))
    deployment = tmp_path / "d.yaml"
    deployment.write_text(yaml.safe_dump({"name": "llm", "model": {
        "model_handler": "my_pkg.handlers.Llm", "download_parameters": download,
        "model_parameters": {"model_name": source, "top_k": 4}}}))
    code, out, err = run_import(capsys, deployment, "-o", tmp_path / "llm", "--templates", REPOSITORY, *options)
    if expected is None:
        assert code == 2 and message in err and "--weights" in err, err
        return
    assert code == 0, err
    assert handler_kwargs(read_config(tmp_path / "llm")) == {"handler": "my_pkg.handlers.Llm", "model_name": expected,
                                                             "top_k": 4}
    assert message is None or message in out


def test_parameters_the_adapter_owns_are_refused(tmp_path, capsys):
    deployment = tmp_path / "d.yaml"
    deployment.write_text(yaml.safe_dump({"name": "x", "model": {
        "model_handler": "my_pkg.handlers.X", "model_parameters": {"python_path": "/x"}}}))
    code, _, err = run_import(capsys, deployment, "-o", tmp_path / "x", "--templates", REPOSITORY)
    assert code == 2 and "model_parameters.python_path" in err


@pytest.mark.parametrize("value", ["text", "8", "true", "null", "[1]", "", 0, -1.5, False, None, [1, "x"], {"a": None}])
def test_parameter_text_round_trips(value):
    assert parse_value(parameter_text(value)) == value


def test_builtin_parameter_lists_match_the_handlers():
    """The importer reads each handler's parameters from the handler: its declared
    CONSTRUCTOR_PARAMETERS (kept equal to __init__ here) or its __init__ signature (mpt)."""
    for builtin in BUILTINS.values():
        module_name, _, class_name = builtin.handler.rpartition(".")
        handler = getattr(__import__(module_name, fromlist=[class_name]), class_name)
        accepted = set(inspect.signature(handler.__init__).parameters) - {"self", "device"}
        assert set(builtin.parameters) == accepted, builtin.model
        if builtin.model != "mpt":
            assert handler.CONSTRUCTOR_PARAMETERS == accepted, builtin.model
        template = text_format.Parse((REPOSITORY / builtin.model / "config.pbtxt").read_text(),
                                     model_config_pb2.ModelConfig())
        assert set(template.parameters) - ADAPTER_PARAMETERS <= accepted, builtin.model


def test_parameters_are_read_from_the_handler_class():
    """A class without CONSTRUCTOR_PARAMETERS: its __init__'s keyword parameters, less `device`."""

    class Handler:
        def __init__(self, model_name_or_path, *args, device=None, limit: int = 1, **kwargs):
            pass

    module = types.ModuleType("mosaic_serving_test_handlers")
    module.Handler = Handler
    sys.modules[module.__name__] = module
    try:
        assert accepted_parameters(f"{module.__name__}.Handler") == {"model_name_or_path", "limit"}
        Handler.CONSTRUCTOR_PARAMETERS = frozenset({"limit"})
        accepted_parameters.cache_clear()
        assert accepted_parameters(f"{module.__name__}.Handler") == {"limit"}
    finally:
        del sys.modules[module.__name__]
        accepted_parameters.cache_clear()


def test_module_runs_as_a_command(tmp_path):
    deployment = write_yaml(tmp_path, """\
        name: wc
        model: {model_handler: word_counter.WordCountHandler, model_parameters: {lowercase: true}}
    """)
    result = subprocess.run(
        [sys.executable, "-m", "mosaic_serving.mosaicml_import", str(deployment), "--output", str(tmp_path / "wc"),
         "--templates", str(REPOSITORY), "--include", str(REPOSITORY / "custom_example/1/word_counter.py")],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stdout and (tmp_path / "wc/1/word_counter.py").is_file()


# ---- served by a real Triton server --------------------------------------------------------

HANDLER_MODULE = '''\
class ParrotHandler:
    """Echoes each input with the constructor's parameters, so the test sees what it got."""

    def __init__(self, prefix, repeat, label, options, device=None):
        self.prefix, self.repeat, self.label, self.options = prefix, repeat, label, options

    def predict(self, model_requests):
        return [{"output": self.prefix + request["input"] * self.repeat, "label": self.label,
                 "types": [type(v).__name__ for v in (self.prefix, self.repeat, self.label, self.options)],
                 "options": self.options} for request in model_requests]
'''


def test_imported_models_load_and_serve_on_triton(tmp_path, capsys, tiny_mpt_path):
    repository = tmp_path / "repository"
    repository.mkdir()
    mpt_yaml = write_yaml(tmp_path, f"""\
        name: tiny-mpt
        gpu_num: 1
        replicas: 1
        model:
          download_parameters:
            hf_path: {tiny_mpt_path}
          model_handler: mosaic_serving.handlers.mpt.MPTModelHandler
          model_parameters:
            model_name: {tiny_mpt_path}
        batching: {{max_batch_size: 4}}
    """, "mpt.yaml")
    (tmp_path / "parrot_handler.py").write_text(HANDLER_MODULE)
    custom_yaml = write_yaml(tmp_path, """\
        name: parrot
        compute: {gpus: 1}
        model:
          model_handler: parrot_handler.ParrotHandler
          model_parameters:
            prefix: ">> "
            repeat: 2
            label: "8"
            options: {stop: ["\\n"]}
    """, "parrot.yaml")
    # KIND_AUTO: the GPU on a GPU machine, the CPU here (KIND_GPU is a load error without one).
    assert run_import(capsys, mpt_yaml, "-o", repository / "tiny-mpt", "--templates", REPOSITORY,
                      "--instance-kind", "auto")[0] == 0
    assert run_import(capsys, custom_yaml, "-o", repository / "parrot", "--templates", REPOSITORY,
                      "--instance-kind", "auto", "--include", tmp_path / "parrot_handler.py")[0] == 0

    with LocalTritonServer(repository, models=["tiny-mpt", "parrot"], log_file=tmp_path / "triton.log") as server:
        import tritonclient.grpc as grpcclient

        [final] = grpc_stream(server.grpc_url, "tiny-mpt", [
            tensor(grpcclient, "text_input", ["Hello"], "BYTES"),
            tensor(grpcclient, "max_new_tokens", [3], "INT32"),
            tensor(grpcclient, "do_sample", [False], "BOOL"),
        ])
        assert text(final["text_output"]).startswith("Hello")
        assert (text(final["finish_reason"]), int(final["num_output_tokens"][0])) == ("length", 3)

        status, body = http_generate(server.http_url, "parrot", {"request": json.dumps({"input": "hi"})})
        assert status == 200, body
        assert json.loads(body["response"]) == {
            "output": ">> hihi", "label": "8", "types": ["str", "int", "str", "dict"], "options": {"stop": ["\n"]},
        }


def test_an_environment_that_cannot_be_built_is_an_error_and_not_cached(tmp_path, capsys):
    deployment = write_yaml(tmp_path, """\
        name: wants-numpy-2
        integrations:
        - {integration_type: pip_packages, packages: ["numpy>=2"]}
        model: {model_handler: word_counter.WordCountHandler}
    """)
    cache = tmp_path / "envs"
    code, _, err = run_import(capsys, deployment, "-o", tmp_path / "m", "--templates", REPOSITORY,
                              "--env-cache", cache, "--include", REPOSITORY / "custom_example/1/word_counter.py")
    assert code == 2 and "installing the requirements" in err and "numpy" in err, err
    assert not (tmp_path / "m").exists()
    assert not [path for path in cache.iterdir() if path.is_dir()]  # a failed build leaves nothing to reuse
