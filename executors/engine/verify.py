"""Verify checks on a step's output: ``expr``, ``contains``, ``not_contains``, ``regex``, ``schema``,
``judge`` (a model's verdict, asked through the runner) and ``grounded`` (citations).

``grounded``: the output cites passages as ``[doc_id#chunk]`` (several in one pair of brackets
separated by ``,`` or ``;``: ``[warranty.md#0; returns-rma.md#1]``); every one it cites must be
among the ``passages`` in the outputs of the steps it depends on (what ``retrieve`` returns), and
it must cite at least one. The passages come from ``context`` (the run's recorded outputs), never
from an index on disk.

Regexes (``regex``, a schema's ``pattern``/``patternProperties``) run on RE2, in linear time
(``planner.regex``); expressions in the bounded sandbox (``planner.references``). Time is the
runner's business: it runs the checks under the attempt's budget.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from dagwright.planner.references import (
    Expression,
    ExpressionError,
    expression,
    lookup,
    render,
    stringify,
)
from dagwright.planner.regex import RegexError, compile_regex, schema_problems, schema_validator
from dagwright.planner.schema import Check


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def _contains(target: Any, needle: Any) -> bool:
    if isinstance(target, list):
        return needle in target
    if isinstance(target, dict) and isinstance(needle, str) and needle in target:
        return True
    return _text(needle) in _text(target)


_BRACKETS = re.compile(r"\[([^\[\]\n]{1,2000})\]")
_CITATION = re.compile(r"(.+)#(\d{1,9})")
_SHOWN = 12  # retrieved passages listed in a failure's message, at most


def citations(text: str) -> list[str]:
    """The ``doc_id#chunk`` citations in ``text``, in order, each once."""
    found: dict[str, None] = {}
    for group in _BRACKETS.finditer(text):
        for part in re.split(r"[,;]", group.group(1)):
            match = _CITATION.fullmatch(part.strip())
            if match:
                found[f"{match.group(1).strip()}#{int(match.group(2))}"] = None
    return list(found)


def retrieved(context: dict[str, Any]) -> list[str]:
    """``doc_id#chunk`` of every passage in the outputs that ``context`` holds, in step order."""
    found: dict[str, None] = {}
    for step in (context.get("steps") or {}).values():
        output = step.get("output") if isinstance(step, dict) else None
        passages = output.get("passages") if isinstance(output, dict) else None
        for p in passages if isinstance(passages, list) else []:
            if isinstance(p, dict) and isinstance(p.get("doc_id"), str):
                if isinstance(p.get("chunk"), int):
                    found[f"{p['doc_id']}#{p['chunk']}"] = None
    return list(found)


def _grounded(target: Any, context: dict[str, Any]) -> tuple[bool, str]:
    known = retrieved(context)
    if not known:
        return False, "no step it depends on retrieved any passage to cite"
    cited = citations(_text(target))
    shown = ", ".join(known[:_SHOWN]) + (
        f" (and {len(known) - _SHOWN} more)" if len(known) > _SHOWN else ""
    )
    if not cited:
        return (
            False,
            f"it cites no passage: cite each passage it uses as [doc_id#chunk], e.g. [{known[0]}]",
        )
    unknown = [c for c in cited if c not in set(known)]
    if unknown:
        return False, (
            f"it cites {', '.join(f'[{c}]' for c in unknown)}, which no step it depends on "
            f"retrieved; it may cite: {shown}"
        )
    return True, ""


Judge = Callable[[str, str | None, Any], tuple[bool, str]]
"""(rubric, model, target) -> (passed, reason): how ``judge`` checks ask a model."""


def run_check(
    check: Check, index: int, output: Any, context: dict[str, Any], judge: Judge | None = None
) -> dict[str, Any]:
    """Evaluate one check; the result names the check and, when it fails, why.

    ``context`` is what the step's references can read (``inputs``, ``steps``): ``expr`` and
    ``target`` see it with ``output`` added; the values of the other kinds are rendered with it,
    and so is the check's label (what the next attempt is told when the check fails).
    """
    label = _label(check, index, context)
    scope = {**context, "output": output}
    try:
        target = expression(check.target).evaluate(scope) if check.target else output
        passed, why = _evaluate(check, target, scope, context, judge)
    except ExpressionError as exc:
        passed, why = False, str(exc)
    result: dict[str, Any] = {"check": label, "kind": check.kind, "passed": passed}
    if not passed:
        result["message"] = f"{label} failed: {why}"
    return result


def _label(check: Check, index: int, context: dict[str, Any]) -> str:
    """The check's label with its ``${{ … }}`` rendered like its value; as written when it
    cannot be (the check's own message says why)."""
    label = check.label(index)
    try:
        return stringify(render(label, context))
    except ExpressionError:
        return label


def _evaluate(
    check: Check, target: Any, scope: dict[str, Any], context: dict[str, Any], judge: Judge | None
) -> tuple[bool, str]:
    kind = check.kind
    if kind == "grounded":
        return _grounded(target, context)
    if kind == "judge":
        if judge is None:
            return False, "no model judge is available to this executor"
        passed, reason = judge(render(check.judge, context), check.model, target)
        return passed, f"the judge said no: {reason}"
    if kind == "expr":
        assert check.expr is not None
        parsed = expression(check.expr)
        value = parsed.evaluate(scope)
        if value:
            return True, ""
        return False, f"evaluated to {value!r}" + _values_read(parsed, scope)
    if kind == "contains":
        needle = render(check.contains, context)
        return _contains(target, needle), f"{needle!r} not found in the output"
    if kind == "not_contains":
        needle = render(check.not_contains, context)
        return not _contains(target, needle), f"{needle!r} found in the output"
    if kind == "regex":
        pattern = stringify(render(check.regex, context))
        try:
            matched = compile_regex(pattern).search(_text(target)) is not None
        except RegexError as exc:  # a pattern rendered from references: known only now
            return False, f"{exc} ({exc.hint})" if exc.hint else str(exc)
        return matched, f"no match for /{pattern}/"
    schema = render(check.json_schema, context)
    problems = schema_problems(schema)
    if problems:
        return False, "; ".join(f"{p} ({p.hint})" if p.hint else str(p) for p in problems)
    try:
        errors = sorted(
            schema_validator(schema).iter_errors(target), key=lambda e: list(e.absolute_path)
        )
    except RegexError as exc:  # in a part schema_problems does not read ($ref'd, say)
        return False, str(exc)
    if not errors:
        return True, ""
    first = errors[0]
    where = "/".join(map(str, first.absolute_path)) or "(root)"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return False, f"schema violation at {where}: {first.message}{more}"


_VALUES_SHOWN, _VALUE_CHARS = 6, 80


def _values_read(parsed: Expression, scope: dict[str, Any]) -> str:
    """What the expression read, for a failed check: ``; output.a = 1, output.b = 2``
    (each value as JSON, shortened; a path that is not there says so)."""
    shown = []
    for ref in list(dict.fromkeys(parsed.refs))[:_VALUES_SHOWN]:
        try:
            text = json.dumps(lookup(scope, ref), ensure_ascii=False, sort_keys=True, default=str)
        except ExpressionError:
            text = "(not there)"
        if len(text) > _VALUE_CHARS:
            text = text[: _VALUE_CHARS - 1] + "…"
        shown.append(f"{ref} = {text}")
    return f"; {', '.join(shown)}" if shown else ""


def run_checks(
    checks: list[Check], output: Any, context: dict[str, Any], judge: Judge | None = None
) -> list[dict[str, Any]]:
    return [run_check(c, i, output, context, judge) for i, c in enumerate(checks)]


__all__ = ["citations", "retrieved", "run_check", "run_checks"]
