"""HFInstructorHandler: instruction-conditioned sentence embeddings (hkunlp/instructor-*).

INSTRUCTOR's pooling, done with plain transformers: InstructorEmbedding 1.0.1 works only with
old sentence-transformers / transformers pins. The same code serves plain sentence-transformers
models (an empty instruction is plain mean pooling), read from the directory's modules.json.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from huggingface_hub import snapshot_download
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel, AutoTokenizer, MT5EncoderModel, T5EncoderModel

from mosaic_serving.devices import resolve_device, resolve_dtype
from mosaic_serving.errors import InvalidRequestError
from mosaic_serving.params import REQUIRED, Field, parse_fields

_REQUEST_FIELDS = [Field("input", list, REQUIRED)]
# sentence-transformers loads only the encoder of these (instructor checkpoints hold no decoder).
_ENCODER_CLASSES = {"t5": T5EncoderModel, "mt5": MT5EncoderModel}


class HFInstructorHandler:
    """Embeds `[instruction, text]` pairs; results are L2-normalised float vectors."""

    # The constructor kwargs a deployment may set (config.pbtxt parameters, MosaicML's
    # model_parameters); `device` is each instance's own. A test keeps this equal to __init__.
    CONSTRUCTOR_PARAMETERS = frozenset({"model_name_or_path", "dtype", "max_seq_length", "max_batch_size"})

    def __init__(
        self,
        model_name_or_path: str | os.PathLike,
        device: str | None = None,
        dtype: str | None = None,
        max_seq_length: int | None = None,
        max_batch_size: int = 64,
    ) -> None:
        path = _local_dir(model_name_or_path)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.max_batch_size = max_batch_size
        modules = _read_modules(path)
        transformer_dir = path / modules["Transformer"][0]
        st_config = _read_json(transformer_dir / "sentence_bert_config.json", {})
        self.do_lower_case = bool(st_config.get("do_lower_case", False))
        self.tokenizer = AutoTokenizer.from_pretrained(transformer_dir)
        self.tokenizer.padding_side = "right"  # the instruction's tokens are masked by position
        self.max_seq_length = max_seq_length or st_config.get("max_seq_length") or self.tokenizer.model_max_length
        config = AutoConfig.from_pretrained(transformer_dir)
        model_class = _ENCODER_CLASSES.get(config.model_type, AutoModel)
        self.model = model_class.from_pretrained(transformer_dir, dtype=self.dtype).to(self.device).eval()
        for folder in modules.get("Pooling", []):
            _check_pooling(path / folder)
        self.dense = [_load_dense(path / folder).to(self.device) for folder in modules.get("Dense", [])]
        self.dim = self.dense[-1][0].out_features if self.dense else config.hidden_size

    def predict(self, model_requests: list[dict[str, Any]]) -> list[list[float]]:
        """MosaicML requests `{"input": [instruction, text]}` or `{"input": text}` -> embeddings."""
        return self.embed([_pair(request) for request in model_requests]).tolist()

    def embed(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """Embed all (instruction, text) pairs in one padded forward pass: float32 [n, dim]."""
        if len(pairs) > self.max_batch_size:
            raise InvalidRequestError(f"'input': {len(pairs)} inputs in one call, at most {self.max_batch_size}")
        if not pairs:
            return np.zeros((0, self.dim), dtype=np.float32)
        instructions, joined = self._prepare(pairs)
        batch = self.tokenizer(joined, padding=True, return_tensors="pt").to(self.device)
        self._check_lengths(batch["attention_mask"].sum(dim=1))
        with torch.inference_mode():
            output = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            keep = batch["attention_mask"].clone()
            for row, skip in enumerate(self._instruction_tokens(instructions)):
                keep[row, :skip] = 0
            pooled = _mean(output.last_hidden_state.float(), keep)
            for dense in self.dense:
                pooled = dense(pooled)
            return torch.nn.functional.normalize(pooled, dim=1).cpu().numpy()

    def _prepare(self, pairs: Sequence[tuple[str, str]]) -> tuple[list[str], list[str]]:
        """Validate; return the stripped instructions and the instruction+text strings.

        The same strings InstructorEmbedding tokenises: the text stripped, glued to the
        instruction with nothing between, the whole stripped again.
        """
        instructions, joined = [], []
        for instruction, text in pairs:
            if not isinstance(instruction, str):
                raise InvalidRequestError(f"'instruction' must be a string, got {type(instruction).__name__}")
            if not isinstance(text, str) or not text.strip():
                raise InvalidRequestError(f"'text' must be a non-empty string, got {text!r}")
            if self.do_lower_case:
                instruction, text = instruction.lower(), text.lower()
            instructions.append(instruction.strip())
            joined.append((instruction + text.strip()).strip())
        return instructions, joined

    def _check_lengths(self, lengths: torch.Tensor) -> None:
        """Reject over-long inputs rather than truncate them (INSTRUCTOR truncates silently)."""
        longest = int(lengths.max())
        if longest > self.max_seq_length:
            raise InvalidRequestError(
                f"'text' with its instruction is {longest} tokens, more than max_seq_length {self.max_seq_length}"
            )

    def _instruction_tokens(self, instructions: list[str]) -> list[int]:
        """How many leading tokens to leave out of the mean, by INSTRUCTOR's rule.

        It counts the instruction's own tokens less one (the closing special token, which the
        joined text has only at its end) and masks nothing when that leaves one or none: so an
        empty instruction is plain mean pooling.
        """
        counts = [len(ids) - 1 for ids in self.tokenizer(instructions)["input_ids"]]
        return [count if count > 1 else 0 for count in counts]


def _pair(request: Any) -> tuple[str, str]:
    """(instruction, text) from one MosaicML request; a bare text has no instruction."""
    if not isinstance(request, dict):
        raise InvalidRequestError(f"each request must be an object with an 'input' field, got {type(request).__name__}")
    value = parse_fields(request, _REQUEST_FIELDS, where="request field")["input"]
    if isinstance(request["input"], str):
        return "", value[0]
    if len(value) != 2:
        raise InvalidRequestError(
            f"request field 'input' must be a text or an [instruction, text] pair of strings, got {len(value)} strings"
        )
    return value[0], value[1]


def _mean(hidden: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Mean of the kept token vectors (sentence-transformers' clamp for an empty mask)."""
    weights = keep.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)


def _local_dir(model_name_or_path: str | os.PathLike) -> Path:
    """A local directory as it is; otherwise a hub id, downloaded (and cached) whole."""
    if os.path.isdir(model_name_or_path):
        return Path(model_name_or_path)
    return Path(snapshot_download(str(model_name_or_path)))


def _read_json(path: Path, default: Any = None) -> Any:
    if default is not None and not path.exists():
        return default
    return json.loads(path.read_text())


def _read_modules(path: Path) -> dict[str, list[str]]:
    """Module folders by kind, in order, from modules.json.

    A directory without one is a plain transformers model, which sentence-transformers
    serves with mean pooling: the same here.
    """
    entries = _read_json(path / "modules.json", [{"type": "Transformer", "path": ""}])
    modules: dict[str, list[str]] = {}
    for entry in entries:
        kind = entry["type"].rsplit(".", 1)[-1]
        if kind not in ("Transformer", "Pooling", "Dense", "Normalize"):
            raise ValueError(f"{path}: unsupported sentence-transformers module {entry['type']!r}")
        modules.setdefault(kind, []).append(entry["path"])
    if len(modules.get("Transformer", [])) != 1:
        raise ValueError(f"{path}: modules.json must name one Transformer module")
    return modules


def _check_pooling(folder: Path) -> None:
    config = _read_json(folder / "config.json")
    modes = {key for key, value in config.items() if key.startswith("pooling_mode_") and value is True}
    if modes != {"pooling_mode_mean_tokens"}:
        raise ValueError(f"{folder}: only mean pooling (pooling_mode_mean_tokens alone) is supported, got {sorted(modes)}")


def _load_dense(folder: Path) -> torch.nn.Sequential:
    """A sentence-transformers Dense module: Linear then its activation (Tanh by default)."""
    config = _read_json(folder / "config.json")
    linear = torch.nn.Linear(config["in_features"], config["out_features"], bias=config.get("bias", True))
    if (folder / "model.safetensors").exists():
        state = load_file(folder / "model.safetensors")
    else:
        state = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    linear.load_state_dict({key.removeprefix("linear."): value for key, value in state.items()})
    activation = _activation(config.get("activation_function", "torch.nn.modules.activation.Tanh"))
    return torch.nn.Sequential(linear, activation).eval()


def _activation(name: str) -> torch.nn.Module:
    """A torch.nn activation by its dotted class name, as sentence-transformers saves it."""
    module, _, class_name = name.rpartition(".")
    if not module.startswith("torch.nn"):
        raise ValueError(f"unsupported Dense activation {name!r}: only torch.nn classes")
    return getattr(importlib.import_module(module), class_name)()
