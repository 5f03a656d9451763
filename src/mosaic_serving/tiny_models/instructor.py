"""A tiny random INSTRUCTOR model with the file layout of hkunlp/instructor-large.

A sentence-transformers directory: a T5 encoder at the root, then mean pooling, a Dense
projection without bias and L2 normalisation. Its tokenizer is a BPE model trained here
on the built-in text, with T5's special tokens (`<pad>` 0, `</s>` 1, `<unk>` 2) and `</s>`
appended to every sequence. It loads with transformers 5 and with the old pins that
InstructorEmbedding 1.0.1 needs (so the parity script can compare against it).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

D_MODEL = 32
OUT_DIM = 16
MAX_SEQ_LENGTH = 128
SEED = 0

_TEXT = """\
Represent the science title for retrieval. Represent the document for retrieval.
Represent the question for retrieving supporting documents. Represent the sentence.
Represent the Wikipedia document for retrieval. Represent the finance statement.
Represent the medicine sentence for clustering. Represent the news title for classification.
The quick brown fox jumps over the lazy dog while the cat sleeps by the warm fire.
A model turns each sentence into a vector of numbers, and similar sentences get similar vectors.
Instructions tell the model what the embedding is for: search, clustering or classification.
Parton energy loss in dense matter changes the spectrum of jets in heavy ion collisions.
The stock market fell sharply today as investors worried about rising interest rates.
Doctors recommend regular exercise, a balanced diet and enough sleep for good health.
How do I bake bread at home? Mix flour, water, salt and yeast, then let the dough rise.
What is the capital of France? Paris is the capital and largest city of France.
Machine learning systems learn patterns from data instead of following fixed rules.
The weather will be sunny in the morning with light rain expected in the evening.
She read a book about the history of the ocean, the ships and the people who sailed them.
A server answers requests from many users; batching requests together makes it faster.
Neural networks with attention read every word of a sentence in relation to every other word.
Please summarise this article in three short sentences for a busy reader.
Children played football in the park until the sun went down behind the hills.
The committee will meet on Monday to discuss the budget for the next year.
Quantum computers use qubits, which can hold a mixture of zero and one at the same time.
My phone battery dies quickly; should I replace it or buy a new phone?
Fresh vegetables, fruit, cheese and bread are sold at the market every Saturday morning.
1 2 3 4 5 6 7 8 9 0 ( ) [ ] , . ; : ! ? ' " - + = / % & * # @ $
"""


def build(path: Path) -> None:
    """Write the tiny model into `path` (created); the same weights and vocabulary every time."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(SEED)
    tokenizer = _tokenizer()
    encoder = T5EncoderModel(_config(len(tokenizer))).eval()
    encoder.save_pretrained(path, safe_serialization=True)
    _save_tokenizer(tokenizer, path)
    _save_sentence_transformers_files(path)


def _tokenizer() -> PreTrainedTokenizerFast:
    """A BPE tokenizer that behaves like T5's: metaspace words, `</s>` at the end."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    # BPE rather than T5's Unigram: Unigram training gives equal-frequency pieces scores in
    # an order that varies from run to run; BPE training is deterministic.
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<pad>", "</s>", "<unk>"])
    tok.train_from_iterator(_TEXT.splitlines(), trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", tok.token_to_id("</s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=512
    )


def _config(vocab_size: int) -> T5Config:
    return T5Config(
        vocab_size=vocab_size,
        d_model=D_MODEL,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        feed_forward_proj="relu",
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
        architectures=["T5EncoderModel"],
    )


def _save_tokenizer(tokenizer: PreTrainedTokenizerFast, path: Path) -> None:
    """Save it so transformers 4 reads it too (transformers 5 writes "TokenizersBackend")."""
    tokenizer.save_pretrained(path)
    # tokenizers < 0.20 (under transformers 4) reads BPE merges only as "a b" strings.
    tokenizer_json = json.loads((path / "tokenizer.json").read_text())
    model = tokenizer_json["model"]
    model["merges"] = [" ".join(merge) for merge in model["merges"]]
    _write_json(path / "tokenizer.json", tokenizer_json)
    config_path = path / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config["model_input_names"] = ["input_ids", "attention_mask"]  # T5 takes no token_type_ids
    _write_json(config_path, config)


def _save_sentence_transformers_files(path: Path) -> None:
    """modules.json and the module folders, in sentence-transformers' own formats."""
    _write_json(
        path / "modules.json",
        [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"},
            {"idx": 3, "name": "3", "path": "3_Normalize", "type": "sentence_transformers.models.Normalize"},
        ],
    )
    _write_json(path / "sentence_bert_config.json", {"max_seq_length": MAX_SEQ_LENGTH, "do_lower_case": False})
    _write_json(
        path / "config_sentence_transformers.json",
        {"__version__": {"sentence_transformers": "2.2.2", "transformers": "4.44.2", "pytorch": "2.13.0"}},
    )
    _write_json(
        path / "1_Pooling" / "config.json",
        {
            "word_embedding_dimension": D_MODEL,
            "pooling_mode_cls_token": False,
            "pooling_mode_mean_tokens": True,
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
        },
    )
    dense = torch.nn.Linear(D_MODEL, OUT_DIM, bias=False)
    _write_json(
        path / "2_Dense" / "config.json",
        {
            "in_features": D_MODEL,
            "out_features": OUT_DIM,
            "bias": False,
            "activation_function": "torch.nn.modules.linear.Identity",
        },
    )
    # sentence-transformers 2.2.2 (which INSTRUCTOR needs) reads only pytorch_model.bin here.
    torch.save({"linear.weight": dense.weight.detach().clone()}, path / "2_Dense" / "pytorch_model.bin")
    (path / "3_Normalize").mkdir(exist_ok=True)


def _write_json(path: Path, value: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2) + "\n")
