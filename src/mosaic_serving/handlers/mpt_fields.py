"""An MPT request's fields and its typed generate parameters, in a module that imports no
torch: the Triton model declares its tensors from them in a backend process that must not
wait for torch (see `triton.loading`).

A request's generate parameters can come from several sources, each parsed once under the
names its client used: MosaicML's `parameters` object, and (through Triton) vLLM-style
`sampling_parameters` and explicit tensors, which also take the aliases of TensorRT-LLM,
vLLM and OpenAI clients. `parse_generate_parameters` merges them, the later source winning.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Iterable, Mapping

from mosaic_serving.params import (NON_EMPTY_TEXT, REQUIRED, SEED, Field, Rule, at_least, finite_at_least,
                                   in_half_open_range, parse_fields)

REQUEST_FIELDS = [Field("input", str, REQUIRED, NON_EMPTY_TEXT),
                  Field("parameters", dict, None)]

# What each generate parameter accepts; the defaults are GenerateParameters'.
GENERATE_FIELDS = [
    Field("max_new_tokens", int, None, at_least(1)),
    Field("max_length", int, None, at_least(1)),
    Field("min_new_tokens", int, None, at_least(0)),
    Field("do_sample", bool),
    Field("temperature", float, None, finite_at_least(0)),
    Field("top_p", float, None, in_half_open_range(0, 1)),
    Field("top_k", int, None, at_least(0)),
    Field("repetition_penalty", float, None, finite_at_least(0, above=True)),
    Field("seed", int, None, SEED),
    Field("stop", list, None, Rule(all, "non-empty strings")),
    Field("eos_token_id", int, None, at_least(0)),
    Field("use_cache", bool),
]
MOSAICML_MAX_LENGTH = 256  # MosaicML's max_length when a request gives no length

# Names used by TensorRT-LLM / vLLM / OpenAI clients, and the parameter each one means.
ALIASES = {"max_tokens": "max_new_tokens", "min_length": "min_new_tokens", "min_tokens": "min_new_tokens"}
_BY_NAME = {field.name: field for field in GENERATE_FIELDS}


def client_field(name: str) -> Field:
    """The field that `name` (a parameter or an alias) means, under the name the client used."""
    return replace(_BY_NAME[ALIASES.get(name, name)], name=name)


# What `sampling_parameters` and the tensors accept: every parameter, and every alias.
CLIENT_FIELDS = [client_field(name) for name in (*_BY_NAME, *ALIASES)]


@dataclass(frozen=True)
class GenerateParameters:
    """One request's generate parameters, typed, with MosaicML's defaults (do_sample, top_p
    0.95, temperature 0.8, a length of MOSAICML_MAX_LENGTH); the rest are transformers'."""

    max_new_tokens: int | None = None  # wins over max_length
    max_length: int | None = None  # prompt and generated text together
    min_new_tokens: int = 0
    do_sample: bool = True
    temperature: float = 0.8  # 0 means greedy
    top_p: float = 0.95
    top_k: int = 0  # 0 disables it
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    eos_token_id: int | None = None
    # Accepted for MosaicML compatibility: the KV cache is always used (same results, faster).
    use_cache: bool = True


@dataclass(frozen=True)
class ParameterSource:
    """Where some generate parameters came from: the values as sent, the words an error
    names them with, the fields they are read with, and whether values may be strings."""

    values: Mapping[str, Any]
    where: str
    accepted: list[Field]
    from_string: bool = False


def mosaicml_parameters(values: Mapping[str, Any]) -> ParameterSource:
    """MosaicML's `parameters` object: the parameters' own names only."""
    return ParameterSource(values, "parameter", GENERATE_FIELDS)


def parse_generate_parameters(sources: Iterable[ParameterSource],
                              checked: Mapping[str, Any] | None = None) -> GenerateParameters:
    """The sources' parameters merged, a later source winning; InvalidRequestError naming the
    field (under its client's name) for a wrong type, value or name. `checked` holds values
    already read with CLIENT_FIELDS (the tensors, by their TensorFields): merged last, as
    they are."""
    merged: dict[str, Any] = {}
    layers = [parse_fields(source.values, source.accepted, source.where, source.from_string) for source in sources]
    for given in (*layers, checked or {}):
        for name, value in given.items():
            merged[ALIASES.get(name, name)] = value
    if "stop" in merged:
        merged["stop"] = tuple(merged["stop"])
    return GenerateParameters(**merged)
