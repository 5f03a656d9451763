"""The frontend in docker-compose.yml and the Helm chart, checked as tests/test_deploy_manifests.py
checks the rest (Compose's own `config`, helm template + Kubernetes schemas)."""

from __future__ import annotations

import json
import os

from test_deploy_manifests import COMPOSE, ROOT, render, run, tools, validate  # noqa: F401 - tools is a fixture


def compose_services(tools, **environment: str) -> dict:
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"), **environment}
    result = run([tools["docker-compose"], "--project-directory", str(ROOT), "-f", str(COMPOSE),
                  "config", "--format", "json"], env=env)
    return json.loads(result.stdout)["services"]


def test_compose_runs_the_frontend_next_to_triton_on_localhost(tools):
    services = compose_services(tools)
    frontend = services["frontend"]
    assert frontend["image"] == services["triton"]["image"]
    assert frontend["command"][:3] == ["python", "-m", "mosaic_serving.frontend"]
    assert "--triton=http://triton:8000" in frontend["command"]
    [port] = frontend["ports"]
    assert (port["host_ip"], port["published"], port["target"]) == ("127.0.0.1", "9000", 9000)
    assert "http://localhost:9000/health/ready" in frontend["healthcheck"]["test"]

    opened = compose_services(tools, BIND_ADDRESS="0.0.0.0", FRONTEND_PORT="19000", FRONTEND_API_KEY="k")["frontend"]
    assert (opened["ports"][0]["host_ip"], opened["ports"][0]["published"]) == ("0.0.0.0", "19000")
    assert opened["environment"]["MOSAIC_FRONTEND_API_KEY"] == "k"


def test_chart_adds_the_frontend_container_and_port_when_enabled(tools):
    assert len(render(tools)["Deployment"]["spec"]["template"]["spec"]["containers"]) == 1  # off by default

    objects = render(tools, "frontend.enabled=true", "frontend.apiKeySecret.name=frontend-key")
    validate(objects)
    containers = {c["name"]: c for c in objects["Deployment"]["spec"]["template"]["spec"]["containers"]}
    frontend = containers["frontend"]
    assert frontend["image"] == containers["triton"]["image"]
    assert frontend["command"] == ["python", "-m", "mosaic_serving.frontend"]
    assert "--triton=http://127.0.0.1:8000" in frontend["args"] and "--port=9000" in frontend["args"]
    assert frontend["readinessProbe"]["httpGet"] == {"path": "/health/ready", "port": "openai"}
    [key] = [item for item in frontend["env"] if item["name"] == "MOSAIC_FRONTEND_API_KEY"]
    assert key["valueFrom"]["secretKeyRef"] == {"name": "frontend-key", "key": "key"}
    ports = {port["name"]: (port["port"], port["targetPort"]) for port in objects["Service"]["spec"]["ports"]}
    assert ports["openai"] == (9000, "openai")
