"""The sandbox every expression is evaluated in: Jinja2's ``ImmutableSandboxedEnvironment``.

- No Python ``eval``; no access to dunder attributes or unsafe methods. On mappings ``a.b`` reads
  the key ``b`` before any attribute, so ``output.items`` is the ``items`` field, not
  ``dict.items``.
- The data an expression reads is shared (a step's output is read by every step after it): the
  sandbox is Jinja2's immutable one, so ``output.items.append(…)`` is refused.
- Operations that could make a huge value in one step (``2 ** 3000000000``, ``"a" * 10**9``,
  ``x.ljust(10**9)``, ``| join`` of a long list with a long separator…) are refused before they
  run (``sandbox_limits``); the rest is bounded in time by the attempt's budget.
- ``is_unsafe_name``: what the sandbox would refuse to read, so that validation refuses it
  before anything runs.

Used by ``planner.expressions`` (parsing with this environment, compiling, evaluating) and,
for ``SAFE_GLOBALS``, by validation.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, sandbox
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

from dagwright.planner import sandbox_limits as limits

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


env = _Env(undefined=StrictUndefined, autoescape=False)
"""The one environment: expressions are parsed, compiled and evaluated in it."""
env.globals.clear()
env.globals.update(SAFE_GLOBALS)
env.filters.update(limits.FILTERS)

_PROBES: tuple[Any, ...] = (object(), type)
"""What ``env.is_safe_attribute`` is asked about: any object (names starting with ``_``) and a
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
    return name in _INTERNAL or not all(env.is_safe_attribute(p, name, None) for p in _PROBES)


@lru_cache(maxsize=4096)
def compiled(source: str) -> Callable[..., Any]:
    """An expression compiled in the sandbox (once per source text)."""
    return env.compile_expression(source, undefined_to_none=False)


__all__ = ["SAFE_GLOBALS", "compiled", "env", "is_unsafe_name"]
