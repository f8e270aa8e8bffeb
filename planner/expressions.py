"""One expression, the text inside ``${{ … }}``: parsed once, its references found, evaluated.

- ``Ref``: a name and the constant path read from it (``steps.a.output.items[0]``); a plain path
  is evaluated by ``lookup``, whose errors say which part is missing and what was there.
- ``Expression``: anything else is parsed by Jinja2's parser in the sandbox (``planner.sandbox``)
  and evaluated there; its references, free names and the names it reads that the sandbox would
  refuse (``unsafe_names``) are found statically, so validation refuses them before anything runs.
- An expression nests at most 32 brackets and 100 operations deep
  (``((((…))))``, ``1 + 1 + … + 1``): deeper ones are refused when parsed, as are those that
  exhaust the parser's recursion or memory, so no walk of a parsed expression can overflow.

Used by ``planner.references`` (expressions inside values), and through it by validation, the
plan's dependencies and the engine.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from jinja2 import TemplateSyntaxError, nodes
from jinja2.exceptions import SecurityError, UndefinedError
from jinja2.parser import Parser

from dagwright.errors import DagwrightError
from dagwright.planner import limits as bounds
from dagwright.planner import sandbox_limits as limits
from dagwright.planner.sandbox import SAFE_GLOBALS, compiled, env, is_unsafe_name

PathPart = str | int
_SIMPLE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)((?:\.[A-Za-z_][A-Za-z0-9_]*|\[\d+\])*)\s*$")
_PART = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]")
_CONSTANTS = frozenset({"true", "false", "none", "True", "False", "None"})
"""Names Jinja parses as constants, not as names to look up."""
_ATTRIBUTE_ARGS = {"attr": 0, "selectattr": 0, "rejectattr": 0, "groupby": 0, "sum": 0}
"""Filters whose positional argument at this index names an attribute (``attribute=`` too)."""


class ExpressionError(DagwrightError):
    """An expression could not be parsed or evaluated."""


@dataclass(frozen=True)
class Ref:
    """A name and the constant path read from it: ``steps.a.output.items[0]``."""

    root: str
    path: tuple[PathPart, ...]

    def __str__(self) -> str:
        return self.root + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in self.path)


class Expression:
    """One parsed expression: its references, and how to evaluate it against a context."""

    __slots__ = ("source", "refs", "_simple", "_compiled", "_ast", "_names", "_unsafe")

    def __init__(self, source: str) -> None:
        self.source = source.strip()
        self._compiled: Callable[..., Any] | None = None
        self._names: frozenset[str] | None = None
        self._unsafe: tuple[str, ...] | None = None
        m = _SIMPLE.match(self.source)
        if m and m.group(1) not in _CONSTANTS:
            parts: list[PathPart] = [
                name if name else int(idx) for name, idx in _PART.findall(m.group(2))
            ]
            self._simple: Ref | None = Ref(m.group(1), tuple(parts))
            self._ast = None
            self.refs: tuple[Ref, ...] = (self._simple,)
            return
        self._simple = None
        try:
            if bounds.brackets_deeper_than(self.source, bounds.EXPRESSION_BRACKETS):
                raise _TooDeep
            parser = Parser(env, self.source, state="variable")
            ast: nodes.Node = parser.parse_expression()
            if not parser.stream.eos:
                raise TemplateSyntaxError("unexpected text after the expression", 1)
            if bounds.tree_deeper_than(ast, bounds.EXPRESSION_DEPTH, _children):
                raise _TooDeep
            self.refs = tuple(_refs_in(ast))
        except TemplateSyntaxError as exc:
            raise ExpressionError(
                f"cannot parse expression {_short(self.source)!r}: {exc.message}"
            ) from None
        except (_TooDeep, RecursionError, MemoryError):
            raise ExpressionError(
                f"expression {_short(self.source)!r} is nested too deeply (at most "
                f"{bounds.EXPRESSION_BRACKETS} brackets and {bounds.EXPRESSION_DEPTH} operations "
                "deep): split it, or compute parts of it in earlier steps"
            ) from None
        self._ast = ast

    @property
    def is_path(self) -> bool:
        """A plain path (``steps.a.output.items[0]``): evaluated by a lookup, never slow."""
        return self._simple is not None

    def names(self) -> frozenset[str]:
        """Free names the expression reads (``inputs``, ``steps``, ``output``, functions…)."""
        if self._names is None:
            if self._ast is None:
                self._names = frozenset((self.refs[0].root,))
            else:
                found = self._ast.find_all(nodes.Name)
                self._names = frozenset(n.name for n in found if n.ctx == "load")
        return self._names

    def unsafe_names(self) -> list[str]:
        """The constant attribute and key names it reads that the sandbox may refuse
        (``is_unsafe_name``), in the order they are written."""
        if self._unsafe is None:
            if self._ast is None:
                assert self._simple is not None
                names: list[str] = [p for p in self._simple.path if isinstance(p, str)]
            else:
                names = list(_read_names(self._ast))
            self._unsafe = tuple(dict.fromkeys(n for n in names if is_unsafe_name(n)))
        return list(self._unsafe)

    def evaluate(self, context: Mapping[str, Any]) -> Any:
        if self._simple is not None:
            return lookup(context, self._simple)
        try:
            if self._compiled is None:
                self._compiled = compiled(self.source)
            return self._compiled(**context)
        except UndefinedError as exc:
            raise ExpressionError(f"${{{{ {self.source} }}}}: {exc.message}") from None
        except limits.TooBig as exc:
            raise ExpressionError(f"${{{{ {self.source} }}}}: {exc}") from None
        except SecurityError as exc:
            raise ExpressionError(f"${{{{ {self.source} }}}} is not allowed: {exc}") from None
        except Exception as exc:  # a type error inside the expression, e.g. len(3)
            raise ExpressionError(
                f"${{{{ {self.source} }}}} failed: {type(exc).__name__}: {exc}"
            ) from None


class _TooDeep(Exception):
    pass


def _children(node: nodes.Node) -> Iterator[nodes.Node]:
    return node.iter_child_nodes()


def _short(source: str, keep: int = 60) -> str:
    return source if len(source) <= keep else source[:keep] + "…"


@lru_cache(maxsize=65536)
def expression(source: str) -> Expression:
    return Expression(source)


def _chain(node: nodes.Node) -> tuple[str, list[PathPart]] | None:
    if isinstance(node, nodes.Name):
        return node.name, []
    if isinstance(node, nodes.Getattr):
        inner = _chain(node.node)
        return None if inner is None else (inner[0], [*inner[1], node.attr])
    if isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
        inner = _chain(node.node)
        if inner is None or not isinstance(node.arg.value, str | int):
            return None
        return inner[0], [*inner[1], node.arg.value]
    return None


def _read_names(node: nodes.Node) -> Iterator[str]:
    """Constant attribute and key names read anywhere in ``node``, inner ones first:
    ``a.b``, ``a['b']``, ``a | attr('b')``, ``a | map(attribute='b.c')``."""
    for child in node.iter_child_nodes():
        yield from _read_names(child)
    if isinstance(node, nodes.Getattr):
        yield node.attr
    elif isinstance(node, nodes.Getitem):
        if isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
            yield node.arg.value
    elif isinstance(node, nodes.Filter | nodes.Test):
        paths = [k.value for k in node.kwargs if k.key == "attribute"]
        index = _ATTRIBUTE_ARGS.get(node.name) if isinstance(node, nodes.Filter) else None
        if index is not None and index < len(node.args):
            paths.append(node.args[index])
        for path in paths:
            if isinstance(path, nodes.Const) and isinstance(path.value, str):
                yield from path.value.split(".")


def _refs_in(node: nodes.Node) -> Iterator[Ref]:
    chain = _chain(node)
    if chain is not None and chain[0] not in SAFE_GLOBALS:
        yield Ref(chain[0], tuple(chain[1]))
        return
    for child in node.iter_child_nodes():
        yield from _refs_in(child)


def lookup(context: Mapping[str, Any], ref: Ref) -> Any:
    """Follow a constant path; errors say which part is missing and what was there."""
    if ref.root not in context:
        raise ExpressionError(f"${{{{ {ref} }}}}: nothing named {ref.root!r} here")
    value: Any = context[ref.root]
    walked = ref.root
    for part in ref.path:
        if isinstance(value, Mapping):
            if part not in value:
                keys = ", ".join(map(str, list(value)[:10])) or "none"
                raise ExpressionError(
                    f"${{{{ {ref} }}}}: {walked} has no field {part!r} (it has: {keys})"
                )
            value = value[part]
        elif isinstance(value, list) and isinstance(part, int):
            if part >= len(value):
                raise ExpressionError(
                    f"${{{{ {ref} }}}}: {walked} has {len(value)} items, no index {part}"
                )
            value = value[part]
        else:
            raise ExpressionError(
                f"${{{{ {ref} }}}}: {walked} is {_kind(value)}, it has no {part!r}"
            )
        walked += f"[{part}]" if isinstance(part, int) else f".{part}"
    return value


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        list: "a list",
    }.get(type(value), type(value).__name__)


__all__ = ["Expression", "ExpressionError", "PathPart", "Ref", "expression", "lookup"]
