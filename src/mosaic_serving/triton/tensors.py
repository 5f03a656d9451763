"""Request tensors to Python values, declared once per model as `params.Field`s.

A model lists its input tensors as Fields (name, kind, default, rule); `read_request`
turns a request's numpy arrays into one dict of Python values per batch row, with errors
that name the tensor. Triton itself has already checked names and data types against
config.pbtxt; what is left is shape, emptiness and value.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import numpy as np

from mosaic_serving.errors import InvalidRequestError
from mosaic_serving.params import Field, parse_fields


def to_python(field: Field, array: np.ndarray) -> Any:
    """One row's tensor as a Python value: a scalar, or a list of strings for `list`."""
    values = [_item(value, field.name) for value in np.asarray(array).reshape(-1)]
    if field.kind is list:
        return values
    if len(values) != 1:
        raise InvalidRequestError(f"input tensor '{field.name}' must hold exactly one element, got {len(values)}")
    return values[0]


def _item(value: Any, name: str) -> Any:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidRequestError(f"input tensor '{name}' is not valid UTF-8") from None
    return value.item() if isinstance(value, np.generic) else value


def read_rows(arrays: Mapping[str, np.ndarray], fields: Iterable[Field], batched: bool) -> list[dict[str, Any]]:
    """Per-row dicts of validated values. With `batched`, axis 0 of every tensor is the row."""
    fields = list(fields)
    if not batched:
        return [_read_row(arrays, fields)]
    rows = {array.shape[0] for array in arrays.values()}
    if len(rows) != 1:
        raise InvalidRequestError(f"input tensors disagree on the batch size: {sorted(rows)}")
    return [_read_row({name: array[row] for name, array in arrays.items()}, fields) for row in range(rows.pop())]


def _read_row(arrays: Mapping[str, np.ndarray], fields: list[Field]) -> dict[str, Any]:
    by_name = {field.name: field for field in fields}
    given = {name: to_python(by_name[name], array) for name, array in arrays.items() if name in by_name}
    return parse_fields(given, fields, where="input tensor")


def request_bytes(arrays: Mapping[str, np.ndarray]) -> int:
    """Total payload of the input arrays: raw size, or the sum of the elements of STRING ones."""
    total = 0
    for array in arrays.values():
        if array.dtype == object:
            total += sum(len(item) if isinstance(item, (bytes, str)) else 8 for item in array.reshape(-1))
        else:
            total += array.nbytes
    return total


def string_tensor(values: Iterable[str | bytes], shape: tuple[int, ...] | None = None) -> np.ndarray:
    """A Triton STRING/BYTES tensor (numpy object array of bytes)."""
    items = [value.encode("utf-8") if isinstance(value, str) else value for value in values]
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array if shape is None else array.reshape(shape)
