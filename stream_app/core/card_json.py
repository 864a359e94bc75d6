"""Reading a model card's JSON strictly: every key present, of its type, or a clear error."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

_T = TypeVar("_T")
FIX = "fix the card or re-export it with export.cards.write_card"


class ModelContractError(ValueError):
    """A model card that is unreadable, or that disagrees with its model or the configuration."""


def mapping(raw: Any, where: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ModelContractError(f"{where} must be a JSON object, got {type(raw).__name__}: {FIX}")
    return raw


def required(obj: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in obj:
        raise ModelContractError(f"{where} lacks the key {key!r}: {FIX}")
    return obj[key]


def typed(obj: Mapping[str, Any], key: str, kind: type[_T], where: str) -> _T:
    value = required(obj, key, where)
    ok = isinstance(value, kind) and not isinstance(value, bool)
    if kind is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok:
        raise type_error(where, key, f"a JSON {_JSON_NAMES.get(kind, kind.__name__)}", value)
    return value  # type: ignore[no-any-return]


_JSON_NAMES: dict[type, str] = {
    str: "string",
    int: "integer",
    float: "number",
    list: "array",
    dict: "object",
}


def type_error(where: str, key: str, expected: str, value: Any) -> ModelContractError:
    return ModelContractError(
        f"{where} key {key!r} must be {expected}, got {type(value).__name__} {value!r:.60}: {FIX}"
    )
