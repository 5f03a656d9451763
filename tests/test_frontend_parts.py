"""The frontend's parts that need no server: chat formats, body reading, model kinds, error
mapping, the child process."""

from __future__ import annotations

import json
import socket

import pytest

from mosaic_client import BadRequestError, ServerUnavailableError
from mosaic_client.errors import from_status
from mosaic_serving.frontend.body import ANY_VALUE, Body, parse_json_object
from mosaic_serving.frontend.catalog import Kind, kind_of
from mosaic_serving.frontend.chat import CHATML_SYSTEM, INSTRUCT_PREAMBLE, chat_format, chatml, instruct
from mosaic_serving.frontend import FrontendPortInUseError, FrontendProcess
from mosaic_serving.frontend.process import FrontendStartError
from mosaic_serving.frontend.state import triton_endpoint
from mosaic_serving.frontend.errors import APIError
from mosaic_serving.launcher.server import free_port

MESSAGES = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Name a colour"}]


def test_chatml_is_mpt_7b_chats_format_with_its_default_system_message():
    assert chatml(MESSAGES) == (
        f"<|im_start|>system\n{CHATML_SYSTEM}<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nName a colour<|im_end|>\n<|im_start|>assistant\n")
    assert chatml([{"role": "system", "content": "Be brief."}, *MESSAGES]).startswith(
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n")


def test_instruct_is_mpt_7b_instructs_format():
    assert instruct(MESSAGES[:1]) == f"{INSTRUCT_PREAMBLE}\n### Instruction:\nHi\n### Response:\n"
    assert instruct([{"role": "system", "content": "Answer in French."}, *MESSAGES]) == (
        "Answer in French.\n### Instruction:\nHi\n### Response:\nHello!\n### Instruction:\nName a colour\n"
        "### Response:\n")


def test_a_tokenizers_chat_template_wins_in_auto(tmp_path):
    template = ("{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
                "{% if add_generation_prompt %}[assistant] {% endif %}")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": template, "bos_token": "<s>"}))
    chat = chat_format("auto", str(tmp_path))
    assert chat.name == "template" and chat.stop == []
    assert chat.render(MESSAGES[:1]) == "<s>[user] Hi\n[assistant] "


def test_chat_template_file_and_template_errors(tmp_path):
    (tmp_path / "chat_template.jinja").write_text("{{ raise_exception('only one message') }}")
    chat = chat_format("template", str(tmp_path))
    with pytest.raises(Exception, match="only one message"):
        chat.render(MESSAGES)
    with pytest.raises(ValueError, match="no chat template"):
        chat_format("template", str(tmp_path / "elsewhere"))


def test_auto_without_a_template_picks_mpts_format_by_name(tmp_path):
    assert chat_format("auto", "mosaicml/mpt-7b-instruct").name == "instruct"
    assert chat_format("auto", "mosaicml/mpt-7b-chat").name == "chatml"
    assert chat_format("auto", str(tmp_path)).name == "chatml" and chat_format().stop == ["<|im_end|>"]


def test_body_fields_are_type_checked_and_leftovers_refused():
    body = Body({"n": 2, "temperature": 1, "flag": True, "user": "u", "presence_penalty": 0, "logprobs": 3})
    assert body.take("n", int) == 2 and body.take("temperature", float) == 1.0
    with pytest.raises(APIError, match="'flag' must be an integer") as caught:
        body.take("flag", int)
    assert caught.value.param == "flag"
    with pytest.raises(APIError, match=r"Unsupported parameter\(s\): 'logprobs'$"):
        body.finish({"user": ANY_VALUE, "presence_penalty": 0, "logprobs": False})
    with pytest.raises(APIError, match="Missing required parameter: 'messages.model'"):
        Body({}, "messages").take("model", str, required=True)


@pytest.mark.parametrize("raw", [b"", b"  ", b"{nope", b"[]", b"\xff\xfe"])
def test_bodies_that_are_not_a_json_object_are_400(raw):
    with pytest.raises(APIError) as caught:
        parse_json_object(raw)
    assert caught.value.status == 400 and caught.value.body()["error"]["type"] == "invalid_request_error"


def test_a_models_kind_follows_its_tensors():
    def config(inputs, outputs, decoupled=False):
        return {"input": [{"name": n} for n in inputs], "output": [{"name": n} for n in outputs],
                "model_transaction_policy": {"decoupled": decoupled}}

    assert kind_of(config(["text_input", "stream"], ["text_output"], True)) == (Kind.TEXT, True)
    assert kind_of(config(["instruction", "text"], ["embedding"])) == (Kind.EMBEDDING, False)
    assert kind_of(config(["prompt", "seed"], ["images"])) == (Kind.IMAGE, False)
    assert kind_of(config(["request", "stream"], ["response"], True)) == (Kind.HANDLER, True)
    assert kind_of(config(["x"], ["y"])) == (Kind.OTHER, False)


def test_a_stream_error_saying_retry_later_is_unavailable():
    assert isinstance(from_status(None, "at capacity: 2 requests already wait (max_queue_size 2); retry later"),
                      ServerUnavailableError)
    assert isinstance(from_status(None, "'top_p' must be in (0, 1]"), BadRequestError)
    assert APIError(503, "busy").headers() == {"Retry-After": "1"} and APIError(400, "bad").headers() == {}


def test_triton_url_names_its_protocol():
    assert triton_endpoint("http://localhost:8000") == ("http", "localhost:8000")
    assert triton_endpoint("grpc://triton:8001/") == ("grpc", "triton:8001")
    for url in ("localhost:8001", "https://localhost:8000", "grpc://"):
        with pytest.raises(ValueError, match="http://HOST:PORT or grpc://HOST:PORT"):
            triton_endpoint(url)


def test_frontend_refuses_a_triton_url_without_protocol(tmp_path):
    with pytest.raises(FrontendStartError, match="exited with 2(.|\n)*grpc://HOST:PORT"):
        FrontendProcess("localhost:8001", free_port(), log_file=tmp_path / "f.log").start()


def test_frontend_process_refuses_a_taken_port_and_stops(tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        with pytest.raises(FrontendPortInUseError, match=str(taken)):
            FrontendProcess("http://127.0.0.1:1", taken, log_file=tmp_path / "f.log").start()
    with FrontendProcess("http://127.0.0.1:1", free_port(), log_file=tmp_path / "f.log") as running:
        assert running.process.poll() is None
    assert running.process.returncode is not None
