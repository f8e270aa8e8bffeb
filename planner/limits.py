"""Bounds on what a workflow, a run's inputs and a step's output may take: values, built from the
settings at the edge (``Settings.limits()``) and passed in; ``Limits()`` holds the defaults."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

MiB = 1 << 20

SETTINGS = {
    "workflow_bytes": "DAGWRIGHT_MAX_WORKFLOW_BYTES",
    "steps": "DAGWRIGHT_MAX_STEPS",
    "depth": "DAGWRIGHT_MAX_DEPTH",
    "input_bytes": "DAGWRIGHT_MAX_INPUT_BYTES",
    "output_bytes": "DAGWRIGHT_MAX_OUTPUT_BYTES",
}
"""The setting behind each limit, for the hints that say how to raise it."""


@dataclass(frozen=True)
class Limits:
    workflow_bytes: int = MiB
    """A workflow file's size, checked before it is parsed (DAGWRIGHT_MAX_WORKFLOW_BYTES)."""
    steps: int = 10_000
    """Steps in a workflow (DAGWRIGHT_MAX_STEPS)."""
    depth: int = 64
    """Nesting of lists and mappings in a workflow and in a run's inputs (DAGWRIGHT_MAX_DEPTH)."""
    input_bytes: int = MiB
    """One run input, as text or JSON (DAGWRIGHT_MAX_INPUT_BYTES)."""
    output_bytes: int = 16 * MiB
    """One attempt's output, as JSON (DAGWRIGHT_MAX_OUTPUT_BYTES)."""
    alias_nodes: int = 10_000
    """Values YAML aliases may add to a workflow in all, counted as written out (not a setting:
    a workflow that needs more writes them out)."""

    def raise_hint(self, limit: str) -> str:
        """How to raise one limit, e.g. ``raise DAGWRIGHT_MAX_STEPS (now 10000)``."""
        return f"raise {SETTINGS[limit]} (now {getattr(self, limit)})"

    def input_problem(
        self, name: str, value: Any, *, json_text: bool = False, what: str = "input"
    ) -> tuple[str, str] | None:
        """(message, hint) when a run input is over the limits: bigger than ``input_bytes`` (a
        string as UTF-8, other data as JSON) or nested deeper than ``depth`` (data, or a string
        that will be parsed as JSON: ``json_text``); None when it is within them. Cheap and
        recursion-free, so it runs before the input is converted or checked. ``what`` names
        the kind of value in the message (a ``--set`` value is bounded as an input is)."""
        if isinstance(value, str):
            size = len(value.encode("utf-8", "surrogatepass"))
            deep = json_text and _text_deeper_than(value, self.depth)
        else:
            deep = _data_deeper_than(value, self.depth)
            size = 0 if deep else len(json.dumps(value, ensure_ascii=False, default=str))
        if deep:
            return (
                f"{what} {name!r} is nested deeper than {self.depth} levels",
                f"flatten it, or {self.raise_hint('depth')}",
            )
        if size > self.input_bytes:
            return (
                f"{what} {name!r} is {size:,} bytes, more than the limit of {self.input_bytes:,}",
                "pass a path or a reference to the data instead, or "
                + self.raise_hint("input_bytes"),
            )
        return None


_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")


def _text_deeper_than(text: str, limit: int) -> bool:
    """Whether JSON text opens more than ``limit`` brackets at once (strings left out)."""
    if text.count("[") + text.count("{") <= limit:
        return False
    depth = 0
    for bracket in _BRACKET.finditer(_JSON_STRING.sub("", text)):
        depth += 1 if bracket.group() in "[{" else -1
        if depth > limit:
            return True
    return False


def _data_deeper_than(value: Any, limit: int) -> bool:
    """Whether lists and mappings nest more than ``limit`` levels in ``value`` (a cycle nests
    deeper than any limit)."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, Mapping):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        if depth + 1 > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


EXPRESSION_BRACKETS = 32
"""Brackets open at once in a ``${{ }}`` expression (fixed): Jinja's parser recurses about a dozen
Python frames per bracket, so far fewer than Python's recursion limit."""
EXPRESSION_DEPTH = 100
"""Levels of a parsed expression (operations, filters, calls, attribute reads; fixed): well within
what Python compiles and what a walk of the expression can recurse."""

_EXPRESSION_STRING = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"", re.DOTALL)
_ANY_BRACKET = re.compile(r"[\[\](){}]")
_Node = TypeVar("_Node")


def brackets_deeper_than(source: str, limit: int) -> bool:
    """Whether an expression opens more than ``limit`` brackets at once (string literals, in
    single or double quotes, left out)."""
    if source.count("(") + source.count("[") + source.count("{") <= limit:
        return False
    depth = 0
    for bracket in _ANY_BRACKET.finditer(_EXPRESSION_STRING.sub("", source)):
        depth += 1 if bracket.group() in "([{" else -1
        if depth > limit:
            return True
    return False


def tree_deeper_than(root: _Node, limit: int, children: Callable[[_Node], Iterable[_Node]]) -> bool:
    """Whether a tree is more than ``limit`` levels deep, walked without recursion."""
    stack = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children(node))
    return False


__all__ = [
    "EXPRESSION_BRACKETS",
    "EXPRESSION_DEPTH",
    "SETTINGS",
    "Limits",
    "brackets_deeper_than",
    "tree_deeper_than",
]
