"""Reading a JSON request body field by field, so that nothing a client sends goes unread.

`Body.take` reads one field (type and range checked, a 400 naming it otherwise). `finish`
refuses every field no endpoint took, unless it holds its neutral value (`None`, or what
OpenAI documents as the default, e.g. `frequency_penalty: 0`): a parameter that would change
the result but is not implemented is an error, never silently dropped.
"""

from __future__ import annotations

import json
from typing import Any

from mosaic_serving.frontend.errors import bad_request
from mosaic_serving.params import Rule

_MISSING = object()
ANY_VALUE = object()  # neutral whatever its value (e.g. `user`, an end-user id for abuse monitoring)

_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "a boolean", list: "an array",
               dict: "an object"}


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object; a 400 for an empty, malformed or non-object body."""
    if not raw.strip():
        raise bad_request("The request body is empty; send a JSON object")
    try:
        value = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise bad_request(f"The request body is not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise bad_request(f"The request body must be a JSON object, got {type(value).__name__}")
    return value


def is_a(value: Any, kind: type) -> bool:
    """isinstance, except that booleans are not numbers and integers are numbers."""
    if kind in (int, float) and isinstance(value, bool):
        return False
    if kind is float:
        return isinstance(value, (int, float))
    return isinstance(value, kind)


class Body:
    """The fields of one JSON object (a request body, or an object inside one at `where`)."""

    def __init__(self, fields: dict[str, Any], where: str = ""):
        self.fields = fields
        self.where = where
        self.taken: set[str] = set()

    def name(self, field: str) -> str:
        return f"{self.where}.{field}" if self.where else field

    def take(
        self,
        field: str,
        kind: type | tuple[type, ...],
        default: Any = None,
        *,
        required: bool = False,
        rule: Rule | None = None,
    ) -> Any:
        """The field's value (`default` when absent or null), checked against `kind` and `rule`."""
        self.taken.add(field)
        value = self.fields.get(field, _MISSING)
        if value is _MISSING or value is None:
            if required:
                raise bad_request(f"Missing required parameter: '{self.name(field)}'", self.name(field))
            return default
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if not any(is_a(value, k) for k in kinds):
            wanted = " or ".join(_TYPE_NAMES.get(k, k.__name__) for k in kinds)
            raise bad_request(f"'{self.name(field)}' must be {wanted}, got {json.dumps(value)[:80]}", self.name(field))
        if kinds == (float,):
            value = float(value)
        if rule is not None and not rule(value):
            raise bad_request(f"'{self.name(field)}' must be {rule.text}, got {json.dumps(value)[:80]}",
                              self.name(field))
        return value

    def finish(self, neutral: dict[str, Any] | None = None) -> None:
        """Refuse the fields nobody took, unless null or at their neutral value in `neutral`."""
        neutral = neutral or {}
        refused = []
        for field, value in self.fields.items():
            if field in self.taken or value is None:
                continue
            if field in neutral and (neutral[field] is ANY_VALUE or value == neutral[field]):
                continue
            refused.append(self.name(field))
        if refused:
            names = ", ".join(f"'{name}'" for name in refused)
            raise bad_request(f"Unsupported parameter(s): {names}", refused[0])
