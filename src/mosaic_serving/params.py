"""Declarative request fields: name, type, default and rule, validated in one place.

Every handler describes the fields it accepts as a list of `Field`s and calls
`parse_fields`; the error messages therefore look the same for every model and always name
the field. Unknown fields are rejected rather than silently ignored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from mosaic_serving.errors import InvalidRequestError

REQUIRED = object()  # sentinel default: the field must be given
MAX_SEED = 2**64 - 1  # the seeds torch.Generator.manual_seed accepts


@dataclass(frozen=True)
class Rule:
    """What a field accepts: the check, and the same in words for the error message, made
    together so that they cannot disagree."""

    accepts: Callable[[Any], bool]
    text: str

    def __call__(self, value: Any) -> bool:
        return self.accepts(value)


def at_least(low: float) -> Rule:
    return Rule(lambda value: value >= low, f">= {low}")


def in_range(low: float, high: float) -> Rule:
    return Rule(lambda value: low <= value <= high, f"between {low} and {high}")


def in_half_open_range(low: float, high: float) -> Rule:
    """low excluded, high included."""
    return Rule(lambda value: low < value <= high, f"in ({low}, {high}]")


def finite_at_least(low: float, above: bool = False) -> Rule:
    """A finite number >= low (> low when `above`)."""
    if above:
        return Rule(lambda value: low < value < math.inf, f"a finite number > {low}")
    return Rule(lambda value: low <= value < math.inf, f"a finite number >= {low}")


NON_EMPTY_TEXT = Rule(lambda text: text.strip() != "", "a non-empty string")
SEED = in_range(0, MAX_SEED)


@dataclass(frozen=True)
class Field:
    """One accepted request field.

    `kind` is `int`, `float`, `bool`, `str`, `dict` or `list` (of str); `rule`, when given,
    says which values of that kind it accepts.
    """

    name: str
    kind: type
    default: Any = None
    rule: Rule | None = None


def coerce(field: Field, value: Any, where: str, from_string: bool = False) -> Any:
    """Return `value` as `field.kind`, or raise naming the field.

    bool is not accepted as a number, a float with a fraction not as an int, so that a
    mistyped request fails loudly. `from_string` also parses "8" / "0.5" / "true", for
    clients (vLLM-style `sampling_parameters`) that send every value as a string.
    """
    if from_string and isinstance(value, str) and field.kind is not str:
        value = _parse_string(field, value, where)
    kind = field.kind
    if kind is bool and isinstance(value, bool):
        return value
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind is str and isinstance(value, str):
        return value
    if kind is dict and isinstance(value, dict):
        return value
    if kind is list:
        if isinstance(value, str):
            return [value]
        if isinstance(value, (list, tuple)) and all(isinstance(item, str) for item in value):
            return list(value)
        raise InvalidRequestError(f"{where} '{field.name}' must be a string or a list of strings, got {value!r}")
    raise InvalidRequestError(
        f"{where} '{field.name}' must be {_kind_name(kind)}, got {type(value).__name__} {value!r}"
    )


def _parse_string(field: Field, text: str, where: str) -> Any:
    try:
        if field.kind is bool:
            if text.lower() in ("true", "1"):
                return True
            if text.lower() in ("false", "0"):
                return False
            raise ValueError(text)
        if field.kind is int:
            return int(text)
        if field.kind is float:
            return float(text)
    except ValueError:
        raise InvalidRequestError(
            f"{where} '{field.name}' must be {_kind_name(field.kind)}, got {text!r}"
        ) from None
    return text


def _kind_name(kind: type) -> str:
    return {int: "an integer", float: "a number", bool: "a boolean", str: "a string", dict: "an object"}.get(kind, kind.__name__)


def parse_fields(
    given: Mapping[str, Any],
    fields: Iterable[Field],
    where: str = "parameter",
    from_string: bool = False,
) -> dict[str, Any]:
    """Validate `given` against `fields`; return every field with defaults filled in.

    A field whose default is None and that was not given is left out of the result, so the
    caller can tell "not given" from a value.
    """
    by_name = {field.name: field for field in fields}
    unknown = sorted(set(given) - set(by_name))
    if unknown:
        raise InvalidRequestError(
            f"unknown {where} {', '.join(repr(name) for name in unknown)}; "
            f"accepted: {', '.join(sorted(by_name))}"
        )
    parsed: dict[str, Any] = {}
    for name, field in by_name.items():
        if name in given and given[name] is not None:
            value = coerce(field, given[name], where, from_string)
            if field.rule is not None and not field.rule(value):
                raise InvalidRequestError(f"{where} '{name}' must be {field.rule.text}, got {value!r}")
            parsed[name] = value
        elif field.default is REQUIRED:
            raise InvalidRequestError(f"{where} '{name}' is required")
        elif field.default is not None:
            parsed[name] = field.default
    return parsed
