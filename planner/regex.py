"""Regexes a workflow gives run on RE2 (``google-re2``): linear time in the text, whatever the
pattern, so no pattern can backtrack catastrophically (``(a+)+$`` on ``"aaaa…a!"`` takes Python's
``re`` longer than a run may live, holding the interpreter all the while).

There is no fallback to a backtracking engine: a pattern that uses syntax RE2 does not have
(backreferences, lookaround, possessive quantifiers) is refused by validation, naming where it is,
and a pattern known only at run time (rendered from references) fails its check saying why.
JSON Schema ``pattern`` and ``patternProperties`` (verify ``schema`` checks, ``llm.generate``'s
``schema``) are matched the same way (``schema_validator``).

RE2 is a C library doing no I/O: this module is part of the core.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from functools import lru_cache
from typing import Any

from dagwright.errors import DagwrightError

RE2_HINT = (
    "regexes run on RE2, in linear time: no backreferences (\\1), lookahead or lookbehind "
    "((?=…), (?!…), (?<=…), (?<!…)), possessive quantifiers or atomic groups; write \\z for "
    "\\Z; see https://github.com/google/re2/wiki/Syntax"
)

_DATA_KEYWORDS = frozenset({"const", "enum", "default", "examples"})
"""JSON Schema keywords whose values are data, not schemas (a ``pattern`` key there is data)."""


class RegexError(DagwrightError):
    """A pattern RE2 cannot run: invalid, or using syntax RE2 does not have (``hint`` says
    what RE2 supports)."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


@lru_cache(maxsize=1)
def _re2() -> tuple[Any, Any]:
    """The module and its options, loaded when a workflow first has a regex (5 ms)."""
    import re2  # type: ignore[import-untyped]  # google-re2 ships no type hints

    options = re2.Options()
    options.log_errors = False  # RE2 would print each refused pattern to stderr
    return re2, options


@lru_cache(maxsize=1024)
def compile_regex(pattern: str) -> Any:
    """The compiled RE2 pattern (``.search(text)``); RegexError when RE2 cannot run it."""
    re2, options = _re2()
    try:
        return re2.compile(pattern, options)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else exc
        reason = reason.decode("utf-8", "replace") if isinstance(reason, bytes) else str(reason)
    try:  # only to say which it is: invalid anywhere, or Python-only syntax
        re.compile(pattern)
    except re.error as exc:
        raise RegexError(f"invalid regex {pattern!r}: {exc}") from None
    raise RegexError(
        f"regex {pattern!r} uses syntax RE2 does not support: {reason}", RE2_HINT
    ) from None


def search(pattern: str, text: str) -> bool:
    return compile_regex(pattern).search(text) is not None


def schema_patterns(schema: Any, at: str = "") -> Iterator[tuple[str, str]]:
    """Every regex in a JSON Schema, with where it is (``properties/word/pattern``)."""
    if isinstance(schema, list):
        for i, item in enumerate(schema):
            yield from schema_patterns(item, f"{at}/{i}" if at else str(i))
        return
    if not isinstance(schema, Mapping):
        return
    for key, value in schema.items():
        where = f"{at}/{key}" if at else str(key)
        if key == "pattern" and isinstance(value, str):
            yield where, value
        elif key == "patternProperties" and isinstance(value, Mapping):
            for name in value:
                yield f"{where}/{name}", str(name)
        if key not in _DATA_KEYWORDS:
            yield from schema_patterns(value, where)


def schema_problems(schema: Any) -> list[RegexError]:
    """What keeps a JSON Schema's regexes from running on RE2, each naming where."""
    problems = []
    for where, pattern in schema_patterns(schema):
        try:
            compile_regex(pattern)
        except RegexError as exc:
            problems.append(RegexError(f"at {where}: {exc}", exc.hint))
    wheres = [w for w, _ in schema_patterns(schema)]
    if _has_key(schema, "unevaluatedProperties") and any("patternProperties" in w for w in wheres):
        problems.append(
            RegexError(
                "unevaluatedProperties together with patternProperties is not supported "
                "(the property names would be matched by a backtracking regex engine)",
                "list the properties, or use additionalProperties",
            )
        )
    return problems


def _has_key(schema: Any, name: str) -> bool:
    if isinstance(schema, list):
        return any(_has_key(item, name) for item in schema)
    if not isinstance(schema, Mapping):
        return False
    return any(
        key == name or (key not in _DATA_KEYWORDS and _has_key(value, name))
        for key, value in schema.items()
    )


def schema_validator(schema: Any) -> Any:
    """A jsonschema validator for ``schema`` (its draft) whose ``pattern``,
    ``patternProperties`` and ``additionalProperties`` match with RE2.

    Check ``schema_problems`` first: a pattern RE2 cannot run raises RegexError here."""
    import jsonschema  # only workflows with a schema pay for it

    return _re2_validator(jsonschema.validators.validator_for(schema))(schema)


@lru_cache(maxsize=16)
def _re2_validator(cls: Any) -> Any:
    import jsonschema

    keywords = {
        "pattern": _pattern,
        "patternProperties": _pattern_properties,
        "additionalProperties": _additional_properties(cls.VALIDATORS.get("additionalProperties")),
    }
    return jsonschema.validators.extend(cls, keywords)  # type: ignore[no-untyped-call]


def _pattern(validator: Any, patrn: str, instance: Any, schema: Any) -> Iterator[Any]:
    from jsonschema.exceptions import ValidationError

    if validator.is_type(instance, "string") and not search(patrn, instance):
        yield ValidationError(f"{instance!r} does not match {patrn!r}")


def _pattern_properties(
    validator: Any, patterns: Mapping[str, Any], instance: Any, schema: Any
) -> Iterator[Any]:
    if not validator.is_type(instance, "object"):
        return
    for patrn, subschema in patterns.items():
        for key, value in instance.items():
            if search(patrn, key):
                yield from validator.descend(value, subschema, path=key, schema_path=patrn)


def _additional_properties(original: Any) -> Any:
    """jsonschema's ``additionalProperties``, matching ``patternProperties`` with RE2."""

    def check(validator: Any, extra: Any, instance: Any, schema: Any) -> Iterator[Any]:
        from jsonschema.exceptions import ValidationError

        if "patternProperties" not in schema or not validator.is_type(instance, "object"):
            if original is not None:
                yield from original(validator, extra, instance, schema)
            return
        known = schema.get("properties", {})
        patterns = list(schema["patternProperties"])
        extras = [k for k in instance if k not in known and not any(search(p, k) for p in patterns)]
        if validator.is_type(extra, "object"):
            for key in extras:
                yield from validator.descend(instance[key], extra, path=key)
        elif not extra and extras:
            names = ", ".join(repr(k) for k in sorted(extras))
            regexes = ", ".join(repr(p) for p in sorted(patterns))
            yield ValidationError(f"{names} do not match any of the regexes: {regexes}")

    return check


__all__ = [
    "RE2_HINT",
    "RegexError",
    "compile_regex",
    "schema_patterns",
    "schema_problems",
    "schema_validator",
    "search",
]
