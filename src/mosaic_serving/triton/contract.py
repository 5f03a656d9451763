"""A model's tensors, declared once in its Triton model class and written into its config.

Each input is a `TensorField`: the request field (name, Python type, default, rule) plus
the tensor's Triton type and shape; each output a `TensorSpec`. `HandlerModel`'s
`auto_complete_config` writes them into the model configuration when Triton loads the model,
so `config.pbtxt` keeps only instances, batching and parameters, and a renamed input is
changed in one place. A `config.pbtxt` that still lists a tensor must agree with the
declaration, or the model fails to load saying how they differ.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mosaic_serving.params import REQUIRED, Field

_TRITON_TYPES = {  # what a Field's Python type travels as, unless the declaration says otherwise
    str: "TYPE_STRING", bool: "TYPE_BOOL", int: "TYPE_INT32", float: "TYPE_FP32", list: "TYPE_STRING",
}


@dataclass(frozen=True)
class TensorField(Field):
    """An input tensor: a request field that arrives as a tensor of `data_type` and `dims`."""

    data_type: str = ""  # e.g. "TYPE_UINT64"; empty: from `kind` (str -> TYPE_STRING, int -> TYPE_INT32, ...)
    dims: tuple[int, ...] = (1,)

    def triton(self) -> dict[str, Any]:
        """This input as a model-configuration entry."""
        return {"name": self.name, "data_type": self.data_type or _TRITON_TYPES[self.kind],
                "dims": list(self.dims), "optional": self.default is not REQUIRED}


def tensor(field: Field, data_type: str = "", dims: tuple[int, ...] = (1,)) -> TensorField:
    """`field` as an input tensor (for fields declared elsewhere, e.g. a handler's parameters)."""
    return TensorField(field.name, field.kind, field.default, field.rule, data_type, dims)


@dataclass(frozen=True)
class TensorSpec:
    """An output tensor."""

    name: str
    data_type: str
    dims: tuple[int, ...] = (-1,)

    def triton(self) -> dict[str, Any]:
        return {"name": self.name, "data_type": self.data_type, "dims": list(self.dims)}


def complete_config(config: Any, inputs: list[TensorField], outputs: list[TensorSpec]) -> Any:
    """Add the declared tensors to a Triton `ModelConfig` (auto-complete); check listed ones."""
    declared = config.as_dict()
    _add_or_check(config.add_input, declared.get("input", []), [item.triton() for item in inputs], "input")
    _add_or_check(config.add_output, declared.get("output", []), [item.triton() for item in outputs], "output")
    return config


def _add_or_check(add: Any, listed: list[dict[str, Any]], wanted: list[dict[str, Any]], kind: str) -> None:
    by_name = {entry["name"]: entry for entry in listed}
    for entry in wanted:
        present = by_name.get(entry["name"])
        if present is None:
            add(entry)
            continue
        for key in ("data_type", "dims", "optional"):
            if key in entry and key in present and _same(present[key]) != _same(entry[key]):
                raise ValueError(f"config.pbtxt {kind} '{entry['name']}' has {key} {present[key]!r}, but the model "
                                 f"declares {entry[key]!r}; remove it from config.pbtxt or make them agree")


def _same(value: Any) -> Any:
    return [int(item) for item in value] if isinstance(value, list) else value
