"""``${{ … }}`` references inside values: found, and rendered once.

- ``${{ inputs.x }}`` and ``${{ steps.<id>.output.<path> }}`` read run inputs and upstream outputs.
- A string that is exactly one reference keeps the referenced value's type; a reference inside a
  longer string is stringified (strings as they are, ``null`` as empty, anything else as JSON).
- Values are rendered **once**: text produced by a reference (an input, a tool's output, retrieved
  text) is never scanned for ``${{`` again, so data can never become an expression.

Its parts: ``planner.expressions`` (one expression: parsed once, its references and the names
it reads found statically, nesting bounded, evaluated) and ``planner.sandbox`` (the Jinja2
sandbox expressions run in: no ``eval``, no Python internals, immutable data, operations that
could make a huge value refused by ``sandbox_limits``). This module re-exports their names, as
every caller (validation, the plan, the engine, the drivers) imports them from here.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from functools import lru_cache
from typing import Any

from dagwright.planner.expressions import (
    Expression,
    ExpressionError,
    PathPart,
    Ref,
    expression,
    lookup,
)
from dagwright.planner.sandbox import SAFE_GLOBALS, is_unsafe_name

OPEN, CLOSE = "${{", "}}"


Part = str | Expression


def split(text: str) -> list[Part]:
    """Split a string into literal text and expressions. Raises ExpressionError when unclosed."""
    if OPEN not in text:
        return [text]
    return list(_split(text))


@lru_cache(maxsize=65536)
def _split(text: str) -> tuple[Part, ...]:
    parts: list[Part] = []
    pos = 0
    while True:
        start = text.find(OPEN, pos)
        if start < 0:
            break
        end = text.find(CLOSE, start + len(OPEN))
        if end < 0:
            raise ExpressionError(f"unclosed '${{{{' in {text!r}: add the closing '}}}}'")
        if start > pos:
            parts.append(text[pos:start])
        inner = text[start + len(OPEN) : end]
        if not inner.strip():
            raise ExpressionError(f"empty expression '${{{{ }}}}' in {text!r}")
        parts.append(expression(inner))
        pos = end + len(CLOSE)
    if pos < len(text):
        parts.append(text[pos:])
    return tuple(parts)


def has_refs(value: Any) -> bool:
    if isinstance(value, str):
        return OPEN in value
    if isinstance(value, Mapping):
        return any(has_refs(v) for v in value.values())
    if isinstance(value, list):
        return any(has_refs(v) for v in value)
    return False


def expressions_in(
    value: Any, at: tuple[PathPart, ...] = ()
) -> Iterator[tuple[tuple[PathPart, ...], Expression]]:
    """Every expression inside a value (nested dicts and lists), with where it sits."""
    if isinstance(value, str):
        yield from _in_text(value, at)
        return
    if type(value) in _SCALARS:  # before the Mapping check: an ABC's isinstance is slow
        return
    if type(value) is dict or isinstance(value, Mapping):
        items: Iterable[tuple[PathPart, Any]] = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return
    for k, v in items:  # strings here, without a generator per value (plans have many)
        if isinstance(v, str):
            if OPEN in v:
                yield from _in_text(v, (*at, k))
        elif type(v) not in _SCALARS:
            yield from expressions_in(v, (*at, k))


def _in_text(
    text: str, at: tuple[PathPart, ...]
) -> Iterator[tuple[tuple[PathPart, ...], Expression]]:
    if OPEN in text:
        for part in _split(text):
            if isinstance(part, Expression):
                yield at, part


def stringify(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def render(value: Any, context: Mapping[str, Any]) -> Any:
    """Resolve every reference in ``value`` against ``context``, once."""
    if isinstance(value, str):
        if OPEN not in value:
            return value
        parts = split(value)
        if len(parts) == 1 and isinstance(parts[0], Expression):
            return parts[0].evaluate(context)
        return "".join(p if isinstance(p, str) else stringify(p.evaluate(context)) for p in parts)
    kind = type(value)
    if kind in _SCALARS:  # before the Mapping check: an ABC's isinstance is slow
        return value
    if kind is dict or isinstance(value, Mapping):
        return {k: render(v, context) for k, v in value.items()}
    if isinstance(value, list):
        return [render(v, context) for v in value]
    return value


_SCALARS = frozenset({int, float, bool, type(None)})


__all__ = [
    "SAFE_GLOBALS",
    "Expression",
    "ExpressionError",
    "PathPart",
    "Ref",
    "expression",
    "expressions_in",
    "has_refs",
    "is_unsafe_name",
    "lookup",
    "render",
    "split",
    "stringify",
]
