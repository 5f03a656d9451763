"""An MPT request's generate parameters: parsed once per source under the client's names,
merged in one place (later sources win, aliases resolved), typed, MosaicML's defaults."""

from __future__ import annotations

from dataclasses import fields

import pytest

from mosaic_serving.errors import InvalidRequestError
from mosaic_serving.handlers.mpt_fields import (CLIENT_FIELDS, GENERATE_FIELDS, GenerateParameters, ParameterSource,
                                                mosaicml_parameters, parse_generate_parameters)


def sampling(values: dict) -> ParameterSource:
    return ParameterSource(values, "sampling_parameters field", CLIENT_FIELDS, from_string=True)


def tensors(values: dict) -> ParameterSource:
    return ParameterSource(values, "input tensor", CLIENT_FIELDS)


def test_every_declared_field_is_a_typed_parameter() -> None:
    assert [field.name for field in GENERATE_FIELDS] == [field.name for field in fields(GenerateParameters)]


def test_nothing_given_means_mosaicml_defaults() -> None:
    parameters = parse_generate_parameters([mosaicml_parameters({})])
    assert parameters == GenerateParameters()
    assert (parameters.do_sample, parameters.temperature, parameters.top_p) == (True, 0.8, 0.95)


def test_later_sources_win_and_aliases_mean_their_parameter() -> None:
    parameters = parse_generate_parameters([
        mosaicml_parameters({"max_new_tokens": 10, "temperature": 0.5, "top_k": 3, "stop": ["\n"]}),
        sampling({"max_tokens": "20", "temperature": "0.7", "min_tokens": "2"}),
        tensors({"temperature": 0.9, "min_length": 4}),
    ])
    assert parameters.max_new_tokens == 20  # sampling_parameters' max_tokens over parameters' max_new_tokens
    assert parameters.temperature == 0.9  # the tensor over both
    assert parameters.min_new_tokens == 4  # min_length (tensor) over min_tokens (sampling)
    assert parameters.top_k == 3 and parameters.stop == ("\n",)  # given once, kept


@pytest.mark.parametrize(
    "sources, message",
    [
        ([sampling({"max_tokens": "0"})], "sampling_parameters field 'max_tokens' must be >= 1, got 0"),
        ([sampling({"top_p": "high"})], "sampling_parameters field 'top_p' must be a number, got 'high'"),
        ([tensors({"seed": -1})], "input tensor 'seed' must be between 0 and 18446744073709551615, got -1"),
        ([mosaicml_parameters({"max_tokens": 5})], "unknown parameter 'max_tokens'"),  # MosaicML's names only
        ([mosaicml_parameters({"temperature": True})], "parameter 'temperature' must be a number, got bool True"),
    ],
)
def test_errors_name_the_field_as_its_client_sent_it(sources, message: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        parse_generate_parameters(sources)
    assert message in str(caught.value)
