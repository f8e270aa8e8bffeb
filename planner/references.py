"""``${{ … }}`` references and expressions, rendered once in a sandbox.

- ``${{ inputs.x }}`` and ``${{ steps.<id>.output.<path> }}`` read run inputs and upstream outputs.
- A string that is exactly one reference keeps the referenced value's type; a reference inside a
  longer string is stringified (strings as they are, ``null`` as empty, anything else as JSON).
- Values are rendered **once**: text produced by a reference (an input, a tool's output, retrieved
  text) is never scanned for ``${{`` again, so data can never become an expression.
- Expressions are evaluated by Jinja2's ``SandboxedEnvironment`` (no Python ``eval``; no access to
  dunder attributes or unsafe methods). On mappings ``a.b`` reads the key ``b`` before any
  attribute, so ``output.items`` is the ``items`` field, not ``dict.items``.
- What the sandbox would refuse is also found statically (``Expression.unsafe_names``), so
  validation refuses it before anything runs.
- The data an expression reads is shared (a step's output is read by every step after it): the
  sandbox is Jinja2's immutable one, so ``output.items.append(…)`` is refused.
- An expression nests at most 32 brackets and 100 operations deep
  (``((((…))))``, ``1 + 1 + … + 1``): deeper ones are refused when parsed, as are those that
  exhaust the parser's recursion or memory, so no walk of a parsed expression can overflow.
- Operations that could make a huge value in one step (``2 ** 3000000000``, ``"a" * 10**9``,
  ``x.ljust(10**9)``, ``| join`` of a long list with a long separator…) are refused before they
  run (``sandbox_limits``); the rest is bounded in time by the attempt's budget.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, nodes, sandbox
from jinja2.exceptions import SecurityError, UndefinedError
from jinja2.parser import Parser
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

from dagwright.errors import DagwrightError
from dagwright.planner import limits as bounds
from dagwright.planner import sandbox_limits as limits

OPEN, CLOSE = "${{", "}}"
PathPart = str | int
_SIMPLE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)((?:\.[A-Za-z_][A-Za-z0-9_]*|\[\d+\])*)\s*$")
_PART = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]")
_CONSTANTS = frozenset({"true", "false", "none", "True", "False", "None"})
"""Names Jinja parses as constants, not as names to look up."""

SAFE_GLOBALS: dict[str, Any] = {
    "len": len,
    "min": min,
    "max": max,
    "sum": sum,
    "abs": abs,
    "round": round,
    "sorted": sorted,
    "any": any,
    "all": all,
    "str": str,
    "int": int,
    "float": float,
    "bool": bool,
}


class ExpressionError(DagwrightError):
    """An expression could not be parsed or evaluated."""


def _no_field(obj: Mapping[Any, Any], name: Any) -> str:
    keys = ", ".join(map(str, list(obj)[:10])) or "none"
    return f"no field {name!r} (it has: {keys})"


class _Env(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset(limits.BINOPS)

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        limits.BINOPS[operator](left, right)
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        # (jinja's own spelling: the double underscores keep the names free for kwargs)
        if __obj is sum:
            args = limits.call_sum(args, kwargs)
        else:
            args = limits.method_call(__obj, args, kwargs)
        return super().call(__context, __obj, *args, **kwargs)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """``str.format`` and ``format_map`` with each field's width and the result bounded."""
        if super().wrap_str_format(value) is None:
            return None
        owner: str = value.__self__
        is_map = value.__name__ == "format_map"

        def bounded(*args: Any, **kwargs: Any) -> str:
            if is_map:
                if kwargs or len(args) != 1:
                    raise TypeError("format_map() takes exactly one argument")
                return str(limits.Formatter(self).vformat(owner, (), args[0]))
            return str(limits.Formatter(self).vformat(owner, args, kwargs))

        return functools.update_wrapper(bounded, value)

    def getattr(self, obj: Any, attribute: str) -> Any:
        if isinstance(obj, Mapping):
            if attribute in obj:
                return obj[attribute]
            return self.undefined(hint=_no_field(obj, attribute), obj=obj, name=attribute)
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        if isinstance(obj, Mapping) and isinstance(argument, str | int) and argument not in obj:
            # jinja's Undefined takes an item as its name too (its own getitem passes ints);
            # the annotation says str
            return self.undefined(
                hint=_no_field(obj, argument),
                obj=obj,
                name=argument,  # type: ignore[arg-type]
            )
        return super().getitem(obj, argument)


_env = _Env(undefined=StrictUndefined, autoescape=False)
_env.globals.clear()
_env.globals.update(SAFE_GLOBALS)
_env.filters.update(limits.FILTERS)

_PROBES: tuple[Any, ...] = (object(), type)
"""What ``_env.is_safe_attribute`` is asked about: any object (names starting with ``_``) and a
type (``mro``, which ``jinja2.sandbox.is_internal_attribute`` refuses on types)."""
_INTERNAL = frozenset().union(
    # what is_internal_attribute refuses on functions, methods, generators and coroutines
    sandbox.UNSAFE_FUNCTION_ATTRIBUTES,
    sandbox.UNSAFE_METHOD_ATTRIBUTES,
    sandbox.UNSAFE_GENERATOR_ATTRIBUTES,
    sandbox.UNSAFE_COROUTINE_ATTRIBUTES,
    sandbox.UNSAFE_ASYNC_GENERATOR_ATTRIBUTES,
    # the Python 2 spellings Jinja 2 refused (Jinja 3 dropped them): still never data
    {"func_closure", "func_code", "func_defaults", "func_dict", "func_globals"},
    {"im_class", "im_func", "im_self"},
)
_ATTRIBUTE_ARGS = {"attr": 0, "selectattr": 0, "rejectattr": 0, "groupby": 0, "sum": 0}
"""Filters whose positional argument at this index names an attribute (``attribute=`` too)."""


@lru_cache(maxsize=65536)
def is_unsafe_name(name: str) -> bool:
    """Whether reading ``name`` (an attribute or a key) reaches for Python's internals: dunder
    names (``__class__``, ``__globals__``) and what Jinja2's sandbox treats as internal (``mro``,
    ``gi_frame``, ``func_globals``…). A single leading underscore is data (``_id``, ``_links``
    in API responses): keys read from mappings; the sandbox still refuses such attributes of
    objects at run time."""
    if name.startswith("__"):
        return True
    if name.startswith("_"):
        return False
    return name in _INTERNAL or not all(_env.is_safe_attribute(p, name, None) for p in _PROBES)


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
            parser = Parser(_env, self.source, state="variable")
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
                self._compiled = _compile(self.source)
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


@lru_cache(maxsize=4096)
def _compile(source: str) -> Callable[..., Any]:
    return _env.compile_expression(source, undefined_to_none=False)


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
    "Expression",
    "ExpressionError",
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
