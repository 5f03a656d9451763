"""Fixtures' helpers for the frontend tests: a frontend process, MosaicML's mcli in its own venv."""

from __future__ import annotations

import json
import os
import subprocess
import venv
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MCLI_VERSION = "0.8.3"
# mosaicml-cli pins rich<14 (the project has rich 15 through typer), so it gets a venv of its own.
MCLI_VENV = ROOT / ".venv" / f"mcli-{MCLI_VERSION}"

_MCLI_CALL = """
import json, sys, mcli
url, inputs, stream = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3] == "stream"
try:
    result = mcli.predict(url, inputs, stream=stream, timeout=120)
    print(json.dumps({"result": list(result) if stream else result}))
except Exception as error:
    print(json.dumps({"error": type(error).__name__, "message": str(error),
                      "status": int(getattr(error, "status", 0) or 0)}))
"""


def mcli_python() -> Path:
    """The Python of a venv with mosaicml-cli (created on first use, from PyPI)."""
    python = MCLI_VENV / "bin" / "python"
    stamp = MCLI_VENV / ".installed"
    if not stamp.exists():
        venv.create(MCLI_VENV, with_pip=True, clear=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", f"mosaicml-cli=={MCLI_VERSION}"],
                       check=True, timeout=600)
        stamp.touch()
    return python


def mcli_predict(url: str, inputs: dict[str, Any], stream: bool = False, api_key: str | None = None,
                 home: Path | None = None) -> dict[str, Any]:
    """`mcli.predict(url, inputs, stream=stream)` run by the real mcli: {"result": ...} or {"error": ...}."""
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(home or ROOT / ".venv"), "NO_PROXY": "*"}
    if api_key:
        env["MOSAICML_API_KEY"] = api_key
    done = subprocess.run([str(mcli_python()), "-c", _MCLI_CALL, url, json.dumps(inputs),
                           "stream" if stream else "whole"], capture_output=True, text=True, timeout=180, env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])
