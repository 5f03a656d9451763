"""The package installed non-editable (a wheel) carries its model repository and serves from it.

The wheel is built from a copy of the project and installed into a fresh virtual environment;
the heavy dependencies (torch, tritonclient, the Triton server) come from this test's own
environment through a `.pth` line, so nothing is downloaded. This environment's editable
install is not on that path (its `.pth` files are not read there), so `mosaic_serving` comes
from the wheel.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from mosaic_serving.repository import SOURCE_REPOSITORY, default_model_repository

ROOT = Path(__file__).resolve().parents[1]
PROJECT_FILES = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md")
PROJECT_DIRS = ("src", "model_repository")

# Run by the installed package's Python: where things resolve, and one request to custom_example.
SERVE_SCRIPT = """
import json, sys, urllib.request
import mosaic_serving
from mosaic_serving.repository import default_model_repository
from mosaic_serving.launcher.server import LocalTritonServer

repository = default_model_repository()
with LocalTritonServer(repository, models=["custom_example"], log_file=sys.argv[1]) as server:
    body = json.dumps({"request": json.dumps({"input": "to be or not to be"})}).encode()
    request = urllib.request.Request(f"http://{server.http_url}/v2/models/custom_example/generate", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        answer = json.loads(response.read())
print(json.dumps({"package": mosaic_serving.__file__, "repository": str(repository), "answer": answer}))
"""


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, **kwargs)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
    return result


def copy_project(target: Path) -> Path:
    """The files a build reads, without this checkout's build leftovers."""
    target.mkdir()
    for name in PROJECT_FILES:
        shutil.copy2(ROOT / name, target / name)
    for name in PROJECT_DIRS:
        shutil.copytree(ROOT / name, target / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build"))
    return target


def install_wheel(tmp_path: Path) -> Path:
    """A fresh venv with the project's wheel installed; returns its python."""
    source = copy_project(tmp_path / "source")
    wheels = tmp_path / "wheels"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "-w", str(wheels), str(source)])
    [wheel] = wheels.glob("mosaic_serving-*.whl")
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    [site_packages] = (venv / "lib").glob("python3.*/site-packages")
    (site_packages / "test-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
         "--disable-pip-version-check", str(wheel)])
    return python


def test_the_checkout_resolves_its_top_level_model_repository():
    assert default_model_repository() == SOURCE_REPOSITORY == ROOT / "model_repository"


def record_imports(python: Path, log: Path) -> None:
    """Make the installed package note each process that imports it (the server's stubs too)."""
    [init] = python.parent.parent.glob("lib/python3.*/site-packages/mosaic_serving/__init__.py")
    with init.open("a") as file:
        file.write(f"\nimport os as _os; open({str(log)!r}, 'a').write(f'{{_os.getpid()}} {{__file__}}\\n')\n")


def test_a_wheel_install_serves_the_model_repository_inside_the_package(tmp_path):
    python = install_wheel(tmp_path)
    venv = python.parent.parent
    imports = tmp_path / "imports.log"
    record_imports(python, imports)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = run([str(python), "-c", SERVE_SCRIPT, str(tmp_path / "triton.log")], cwd=tmp_path, env=env)
    found = json.loads(result.stdout.strip().splitlines()[-1])

    package = Path(found["package"]).parent
    assert package.is_relative_to(venv), found  # the wheel's copy, not this checkout's source
    assert Path(found["repository"]) == package / "model_repository"
    assert (package / "model_repository" / "custom_example" / "1" / "word_counter.py").is_file()
    assert json.loads(found["answer"]["response"]) == {"to": 2, "be": 2, "or": 1, "not": 1}
    importers = dict(line.split(" ", 1) for line in imports.read_text().splitlines())
    assert len(importers) >= 2, importers  # this script and the model's backend stub
    assert set(importers.values()) == {found["package"]}, importers
