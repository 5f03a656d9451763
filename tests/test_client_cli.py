"""The `mosaic-client` command line against the real server, over gRPC and HTTP.

Commands run in-process (`main(argv)`, output captured) and are compared with the Python
client's results; one test runs the installed console script, one the README's commands.
"""

from __future__ import annotations

import io
import json
import shlex
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from mosaic_client import Client
from mosaic_client.cli import main
from test_client_support import (
    GREEDY,
    PROMPT,
    PROTOCOLS,
    assert_same_images,
    closed_url,
    for_test_server,
    readme_client_blocks,
    url_for,
)

SMALL_IMAGE = ["--height", "64", "--width", "64", "--steps", "2", "--seed", "3"]


@pytest.fixture(params=PROTOCOLS)
def protocol(request):
    return request.param


@pytest.fixture
def client(server, protocol):
    """The Python client, whose results the command line must print."""
    with Client(url_for(server, protocol), protocol) as client:
        yield client


@pytest.fixture
def run(server, protocol, capsys):
    """Run `mosaic-client ARGS --url ... --protocol ...`: (exit status, stdout, stderr)."""

    def run(*args: str) -> tuple[int, str, str]:
        status = main([*args, "--url", url_for(server, protocol), "--protocol", protocol])
        out, err = capsys.readouterr()
        return status, out, err

    return run


def test_generate_whole_and_streamed(run, client):
    want = client.generate(PROMPT, max_new_tokens=12, **GREEDY)
    assert run("generate", PROMPT, "--max-new-tokens", "12", "--greedy") == (0, want.text + "\n", "")
    status, out, _ = run("generate", PROMPT, "--max-new-tokens", "12", "--param", "do_sample=false", "--json")
    assert status == 0 and json.loads(out) == asdict(want)
    assert run("generate", PROMPT, "--max-new-tokens", "12", "--greedy", "--stream") == (0, want.text + "\n", "")
    status, out, _ = run("generate", PROMPT, "--max-new-tokens", "12", "--greedy", "--stream", "--json")
    pieces = [json.loads(line)["text"] for line in out.splitlines()]
    assert status == 0 and all(pieces) and "".join(pieces) == want.text


def test_embed_prints_one_row_per_text(run, client):
    texts = ["first text", "second text"]
    want = client.embed(texts, instruction="Represent:")
    status, out, _ = run("embed", *texts, "--instruction", "Represent:")
    assert status == 0
    np.testing.assert_allclose(np.loadtxt(out.splitlines(), ndmin=2), want, rtol=1e-5, atol=1e-6)
    status, out, _ = run("--json", "embed", *texts, "--instruction", "Represent:")
    assert status == 0
    np.testing.assert_allclose(json.loads(out)["embeddings"], want, atol=1e-5, rtol=0)  # batching may differ


def test_image_writes_pngs_and_shows_progress(run, client, tmp_path):
    [want] = client.generate_images("a cat", height=64, width=64, num_inference_steps=2, seed=3)
    status, out, err = run("image", "a cat", "-o", str(tmp_path / "cat.png"), *SMALL_IMAGE)
    assert (status, out) == (0, f"{tmp_path / 'cat.png'}\n")
    assert (tmp_path / "cat.png").read_bytes() == want
    assert "generating 1 image(s)" in err and " s" in err
    status, out, _ = run("image", "a cat", "-o", str(tmp_path / "two.png"), *SMALL_IMAGE, "--num-images", "2", "--json")
    paths = [tmp_path / "two-1.png", tmp_path / "two-2.png"]
    assert status == 0 and json.loads(out) == {"files": [str(path) for path in paths]}
    assert_same_images([paths[0].read_bytes()], [want])  # the first of two is the image of one
    assert paths[1].read_bytes() != want


def test_health_lists_every_model(run):
    status, out, _ = run("health")
    assert status == 0 and "live, ready" in out
    for model in ("mpt", "instructor", "diffusion", "custom_example"):
        assert any(line.split() == [model, "ready"] for line in out.splitlines()), out
    status, out, _ = run("health", "--json")
    assert status == 0 and json.loads(out)["models"]["mpt"] is True


def test_predict_takes_a_mosaicml_request(run, monkeypatch):
    request = {"inputs": ["to be or not to be"]}
    counts = {"outputs": [{"to": 2, "be": 2, "or": 1, "not": 1}]}
    status, out, _ = run("predict", "custom_example", json.dumps(request))
    assert status == 0 and json.loads(out) == counts
    monkeypatch.setattr(sys, "stdin", io.StringIO(json.dumps({"inputs": ["Hi"], "parameters": {"max_new_tokens": 2}})))
    status, out, _ = run("predict", "mpt", "-")
    [text] = json.loads(out)["outputs"]
    assert status == 0 and text.startswith("Hi")


def test_errors_exit_1_with_the_message_on_stderr(run):
    status, out, err = run("generate", PROMPT, "--top-p", "7")
    assert (status, out) == (1, "") and err.startswith("error: BadRequestError:") and "'top_p'" in err
    status, _, err = run("predict", "custom_example", "not json")
    assert status == 1 and "REQUEST must be JSON" in err


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_unreachable_server(protocol, capsys):
    url = closed_url()
    assert main(["health", "--url", url, "--protocol", protocol]) == 1
    out, err = capsys.readouterr()
    assert "NOT live, NOT ready" in out and err.startswith("error:")
    assert main(["--json", "health", "--url", url, "--protocol", protocol]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["live"] is False and report["error"]
    assert main(["generate", "hi", "--url", url, "--protocol", protocol]) == 1
    assert "ServerUnavailableError" in capsys.readouterr().err


def test_bad_usage_exits_2():
    with pytest.raises(SystemExit) as exited:
        main(["generate"])
    assert exited.value.code == 2


def test_installed_console_script(server):
    script = Path(sys.executable).with_name("mosaic-client")
    done = subprocess.run([str(script), "--url", server.http_url, "--protocol", "http", "--json", "health"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["ready"] is True


def test_readme_commands_run(server, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    lines = [line for block in readme_client_blocks("bash") for line in block.splitlines()
             if line.startswith("mosaic-client ")]
    assert len(lines) >= 5
    for line in lines:
        args = shlex.split(for_test_server(line, server), comments=True)[1:]
        protocol = "http" if "http" in args else "grpc"
        assert main([*args, "--url", url_for(server, protocol)]) == 0, (line, capsys.readouterr())
    assert (tmp_path / "lighthouse.png").read_bytes().startswith(b"\x89PNG")
