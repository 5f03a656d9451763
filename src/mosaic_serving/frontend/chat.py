"""Chat messages to one prompt: the tokenizer's chat template, or MPT's own formats.

- `template`: the Jinja chat template of a tokenizer directory (`chat_template` in
  tokenizer_config.json, or a chat_template.jinja file), rendered as transformers does (a
  sandboxed Jinja environment, `add_generation_prompt=True`, `bos_token`/`eos_token`).
- `chatml`: mosaicml/mpt-7b-chat's format (ChatML), with its default system message;
  generation also stops at `<|im_end|>`.
- `instruct`: mosaicml/mpt-7b-instruct's (Dolly) format; a system message replaces its
  preamble, earlier turns become Instruction/Response pairs; generation also stops at
  `### Instruction:`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": text}

CHATML_SYSTEM = ("A conversation between a user and an LLM-based AI assistant. "
                 "The assistant gives helpful and honest answers.")
INSTRUCT_PREAMBLE = ("Below is an instruction that describes a task. "
                     "Write a response that appropriately completes the request.")
FORMATS = ("auto", "template", "chatml", "instruct")


@dataclass(frozen=True)
class ChatFormat:
    """How messages become a prompt, and the stop strings that end the assistant's turn."""

    name: str
    render: Callable[[list[Message]], str]
    stop: list[str] = field(default_factory=list)


def chatml(messages: list[Message]) -> str:
    if not messages or messages[0]["role"] != "system":
        messages = [{"role": "system", "content": CHATML_SYSTEM}, *messages]
    turns = [f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages]
    return "".join(turns) + "<|im_start|>assistant\n"


def instruct(messages: list[Message]) -> str:
    preamble = INSTRUCT_PREAMBLE
    parts = []
    for message in messages:
        if message["role"] == "system":
            preamble = message["content"]
        elif message["role"] == "user":
            parts.append(f"### Instruction:\n{message['content']}\n")
        else:
            parts.append(f"### Response:\n{message['content']}\n")
    return f"{preamble}\n" + "".join(parts) + "### Response:\n"


def template_source(tokenizer_dir: Path) -> tuple[str, dict[str, Any]] | None:
    """(chat template, tokenizer config) of a tokenizer directory, or None without a template."""
    config_path = tokenizer_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: the default one
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    jinja_file = tokenizer_dir / "chat_template.jinja"
    if template is None and jinja_file.is_file():
        template = jinja_file.read_text()
    return (template, config) if template else None


def _token_text(value: Any) -> str:
    """A special token as written in tokenizer_config.json (a string or an AddedToken dict)."""
    if isinstance(value, dict):
        return value.get("content", "")
    return value or ""


def template_format(template: str, config: dict[str, Any]) -> ChatFormat:
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    environment.globals["raise_exception"] = raise_exception
    compiled = environment.from_string(template)
    tokens = {"bos_token": _token_text(config.get("bos_token")), "eos_token": _token_text(config.get("eos_token"))}

    def render(messages: list[Message]) -> str:
        return compiled.render(messages=messages, add_generation_prompt=True, **tokens)

    return ChatFormat("template", render)


def chat_format(name: str = "auto", tokenizer: str | None = None) -> ChatFormat:
    """The format `name`. `tokenizer` is the text model's tokenizer: a local directory (its
    chat template is read) or a hub id. `auto` is the tokenizer's template when it has one,
    else `instruct` when the tokenizer's name says instruct, else `chatml`."""
    if name not in FORMATS:
        raise ValueError(f"chat format must be one of {', '.join(FORMATS)}, got {name!r}")
    directory = Path(tokenizer) if tokenizer and Path(tokenizer).is_dir() else None
    source = template_source(directory) if directory else None
    if name == "template" or (name == "auto" and source):
        if source is None:
            raise ValueError(f"no chat template in tokenizer directory {tokenizer!r}")
        return template_format(*source)
    if name == "instruct" or (name == "auto" and tokenizer and "instruct" in tokenizer.lower()):
        return ChatFormat("instruct", instruct, ["### Instruction:"])
    return ChatFormat("chatml", chatml, ["<|im_end|>"])
