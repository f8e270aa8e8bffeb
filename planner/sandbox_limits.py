"""Size bounds on what one operation in an expression may make (the sandbox's resource limits).

Jinja2's sandbox keeps expressions away from Python's internals, not from huge values:
``2 ** 3000000000`` is one C call that holds the interpreter for half a minute and takes a
gigabyte, ``"a" * 10**9`` a gigabyte at once. No timeout can interrupt a single C call, so the
operations that can amplify their operands are checked **before** they run:

- ``**`` on integers: at most ``MAX_BITS`` bits of result;
- ``*`` repeating a string, list or tuple, string methods and filters that pad, join, replace
  or batch (``ljust``, ``center``, ``join``, ``replace``, ``batch``…), ``sum`` with a list or
  string start: at most ``MAX_LENGTH`` items (characters, elements) made;
- format widths and precisions (``'%9d' % x``, ``'{:>9}'.format(x)``, ``| format``): at most
  ``MAX_LENGTH``; a formatted string as a whole too.

What remains is linear in the size of the data and the expression, and bounded in time by the
attempt's budget (``executors/runner.py``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from jinja2 import filters as jf
from jinja2 import pass_environment, pass_eval_context
from jinja2.sandbox import SandboxedFormatter
from markupsafe import soft_str

MAX_LENGTH = 1_000_000
"""The most items (characters of a string, elements of a list) one operation may make."""
MAX_BITS = 10_000
"""The most bits ``**`` may make (about 3000 digits: a result that can still be recorded)."""

_KINDS: dict[type, str] = {
    str: "a string",
    bytes: "a bytes value",
    list: "a list",
    tuple: "a tuple",
}
_PERCENT = re.compile(r"%%|%(?:\([^)]*\))?[#0 +\-]*(\*|\d+)?(?:\.(\*|\d+))?")
_DIGITS = re.compile(r"\d+")
_SIZED = (str, bytes, list, tuple)


class TooBig(Exception):
    """An operation would make a value beyond the bounds (the message says which)."""


def _made(kind: Any, n: int) -> None:
    if n > MAX_LENGTH:
        what = _KINDS.get(kind if isinstance(kind, type) else type(kind), "a value")
        raise TooBig(f"this would make {what} of {n} items (at most {MAX_LENGTH})")


def _short(value: Any) -> str:
    text = repr(value) if not isinstance(value, int) or value.bit_length() < 64 else "a big number"
    return text if len(text) <= 24 else text[:21] + "..."


def _width(number: int) -> None:
    if number > MAX_LENGTH:
        raise TooBig(f"a format width or precision of {number} (at most {MAX_LENGTH})")


def _digits(text: str) -> None:
    for run in _DIGITS.findall(text):
        _width(int(run) if len(run) < 20 else 10**20)


# -- operators -------------------------------------------------------------------------------------


def power(base: Any, exponent: Any) -> None:
    if not (isinstance(base, int) and isinstance(exponent, int)) or exponent <= 0:
        return
    if abs(base) <= 1:
        return
    bits = math.log2(abs(base)) * exponent
    if bits > MAX_BITS:
        raise TooBig(
            f"{_short(base)} ** {_short(exponent)} would be a number of about {int(bits)} bits"
            f" (at most {MAX_BITS})"
        )


def repeat(left: Any, right: Any) -> None:
    for seq, times in ((left, right), (right, left)):
        if isinstance(seq, _SIZED) and isinstance(times, int) and times > 0:
            _made(seq, len(seq) * times)


def percent(fmt: Any, values: Any) -> None:
    """``fmt % values`` on strings: every width within bounds, and the whole result."""
    if not isinstance(fmt, str | bytes):
        return
    text = fmt if isinstance(fmt, str) else fmt.decode("latin-1")
    specs = 0
    for m in _PERCENT.finditer(text):
        if m.group(0) == "%%":
            continue
        specs += 1
        for number in m.groups():
            if number == "*":
                raise TooBig("a '*' width or precision is not allowed in expressions")
            if number:
                _width(int(number) if len(number) < 20 else 10**20)
    if isinstance(values, tuple):
        made = sum(len(v) for v in values if isinstance(v, _SIZED))
    else:
        items = values.values() if isinstance(values, Mapping) else [values]
        made = specs * max((len(v) for v in items if isinstance(v, _SIZED)), default=0)
    _made(fmt, len(fmt) + made)


BINOPS: dict[str, Callable[[Any, Any], None]] = {"**": power, "*": repeat, "%": percent}
"""The checks run before these operators (the sandbox's ``intercepted_binops``)."""


# -- methods of strings ----------------------------------------------------------------------------


def _replaced(s: Any, old: Any, new: Any, count: Any = -1) -> int:
    if not isinstance(old, _SIZED) or not isinstance(new, _SIZED):
        return len(s)
    hits = len(s) + 1 if not old else s.count(old)
    if isinstance(count, int) and count >= 0:
        hits = min(hits, count)
    return len(s) + hits * max(0, len(new) - len(old))


def _joined(sep: Any, items: list[Any]) -> int:
    return len(sep) * max(0, len(items) - 1) + sum(
        len(x) if isinstance(x, _SIZED) else 1 for x in items
    )


def _translated(s: Any, table: Any) -> int:
    if not isinstance(table, Mapping):
        return len(s)
    longest = max((len(v) for v in table.values() if isinstance(v, _SIZED)), default=1)
    return len(s) * max(longest, 1)


def _arg(args: tuple[Any, ...], kwargs: dict[str, Any], index: int, name: str, default: Any) -> Any:
    return args[index] if len(args) > index else kwargs.get(name, default)


def method_call(obj: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """Check a call of a string's method before it runs; returns the arguments to call it with
    (an iterable to ``join`` is read once, here)."""
    owner = getattr(obj, "__self__", None)
    if not isinstance(owner, str | bytes):
        return args
    name = getattr(obj, "__name__", "")
    made = len(owner)
    if name in ("ljust", "rjust", "center", "zfill"):
        width = _arg(args, kwargs, 0, "width", 0)
        made = max(made, width if isinstance(width, int) else 0)
    elif name == "expandtabs":
        size = _arg(args, kwargs, 0, "tabsize", 8)
        tabs = owner.count("\t") if isinstance(owner, str) else owner.count(b"\t")
        made += tabs * max(int(size), 0)
    elif name == "replace" and len(args) >= 2:
        made = _replaced(owner, *args[:3])
    elif name == "join" and args:
        items = list(args[0])
        made = _joined(owner, items)
        args = (items, *args[1:])
    elif name == "translate" and args:
        made = _translated(owner, args[0])
    _made(owner, made)
    return args


def call_sum(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """``sum(items, start)`` with a list, tuple or string start concatenates."""
    start = _arg(args, kwargs, 1, "start", 0)
    if not isinstance(start, _SIZED) or not args:
        return args
    items = list(args[0])
    _made(start, len(start) + sum(len(x) for x in items if isinstance(x, _SIZED)))
    return (items, *args[1:])


class Formatter(SandboxedFormatter):
    """``str.format`` in the sandbox, with each field's width and the whole result bounded."""

    made = 0

    def format_field(self, value: Any, format_spec: str) -> Any:
        _digits(format_spec)
        text = super().format_field(value, format_spec)
        self.made += len(text)
        _made(str, self.made)
        return text


# -- filters -----------------------------------------------------------------------------------------


def _center(value: Any, width: int = 80) -> str:
    _made(str, max(len(soft_str(value)), width if isinstance(width, int) else 0))
    return jf.do_center(value, width)


def _indent(s: Any, width: int | str = 4, first: bool = False, blank: bool = False) -> str:
    text = soft_str(s)
    pad = len(width) if isinstance(width, str) else width
    _made(str, len(text) + (text.count("\n") + 1) * max(pad, 0))
    return jf.do_indent(s, width, first, blank)


def _format(value: Any, *args: Any, **kwargs: Any) -> str:
    percent(soft_str(value), kwargs or args)
    return jf.do_format(value, *args, **kwargs)


@pass_eval_context
def _replace(eval_ctx: Any, s: Any, old: Any, new: Any, count: int | None = None) -> str:
    _made(str, _replaced(soft_str(s), str(old), str(new), -1 if count is None else count))
    return jf.do_replace(eval_ctx, s, old, new, count)


def _mapped(environment: Any, value: Iterable[Any], attribute: Any) -> list[Any]:
    if attribute is None:
        return list(value)
    get = jf.make_attrgetter(environment, attribute)
    return [get(x) for x in value]


@pass_eval_context
def _join(eval_ctx: Any, value: Iterable[Any], d: str = "", attribute: Any = None) -> str:
    items = _mapped(eval_ctx.environment, value, attribute)
    _made(str, _joined(d, [x if isinstance(x, _SIZED) else str(x) for x in items]))
    return jf.sync_do_join(eval_ctx, items, d)


def _batch(value: Iterable[Any], linecount: int, fill_with: Any = None) -> Any:
    items = list(value)
    if fill_with is not None and isinstance(linecount, int) and linecount > 0 and items:
        _made(list, -(-len(items) // linecount) * linecount)
    return jf.do_batch(items, linecount, fill_with)


def _slice(value: Iterable[Any], slices: int, fill_with: Any = None) -> Any:
    items = list(value)
    _made(list, len(items) + (slices if isinstance(slices, int) else 0))
    return jf.sync_do_slice(items, slices, fill_with)


@pass_environment
def _sum(environment: Any, iterable: Iterable[Any], attribute: Any = None, start: Any = 0) -> Any:
    items = _mapped(environment, iterable, attribute)
    call_sum((items, start), {})
    return jf.sync_do_sum(environment, items, None, start)


@pass_environment
def _wordwrap(
    environment: Any,
    s: str,
    width: int = 79,
    break_long_words: bool = True,
    wrapstring: str | None = None,
    break_on_hyphens: bool = True,
) -> str:
    text = soft_str(s)
    joint = len(wrapstring) if isinstance(wrapstring, str) else 2
    lines = len(text) // max(width if isinstance(width, int) else 1, 1) + text.count("\n") + 1
    _made(str, len(text) + lines * joint)
    return jf.do_wordwrap(environment, s, width, break_long_words, wrapstring, break_on_hyphens)


FILTERS: dict[str, Callable[..., Any]] = {
    "center": _center,
    "indent": _indent,
    "format": _format,
    "replace": _replace,
    "join": _join,
    "batch": _batch,
    "slice": _slice,
    "sum": _sum,
    "wordwrap": _wordwrap,
}
"""The filters that can amplify their input, bounded (they replace Jinja's own)."""


__all__ = [
    "BINOPS",
    "FILTERS",
    "Formatter",
    "MAX_BITS",
    "MAX_LENGTH",
    "TooBig",
    "call_sum",
    "method_call",
]
