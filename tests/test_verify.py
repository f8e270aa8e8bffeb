"""Each kind of verify check, passing and failing, with messages that name the check."""

from __future__ import annotations

from typing import Any

from dagwright.executors.verify import run_check
from dagwright.planner.schema import Check

CTX: dict[str, Any] = {"inputs": {"min": 2, "word": "beta"}, "steps": {}}


def check(spec: dict[str, Any], output: Any) -> dict[str, Any]:
    return run_check(Check.model_validate(spec), 0, output, CTX)


def test_expr() -> None:
    assert check({"expr": "len(output.items) >= inputs.min"}, {"items": [1, 2]})["passed"]
    failed = check({"expr": "len(output.items) >= 3"}, {"items": [1]})
    assert not failed["passed"]
    assert failed["message"] == "check 1 (expr: len(output.items) >= 3) failed: evaluated to False"


def test_expr_error_is_a_failed_check_not_a_crash() -> None:
    failed = check({"expr": "output.missing > 1"}, {"x": 1})
    assert not failed["passed"] and "no field 'missing'" in failed["message"]


def test_contains_and_not_contains() -> None:
    assert check({"contains": "alpha"}, "alpha beta")["passed"]
    assert check({"contains": 2}, [1, 2, 3])["passed"]
    assert check({"contains": "key"}, {"key": 1})["passed"]
    assert check({"contains": "${{ inputs.word }}"}, "alpha beta")["passed"], "values are rendered"
    assert not check({"contains": "gamma"}, "alpha beta")["passed"]
    assert check({"not_contains": "TODO"}, "done")["passed"]
    failed = check({"not_contains": "TODO", "name": "no placeholders"}, "a TODO left")
    assert failed["message"] == "no placeholders failed: 'TODO' found in the output"


def test_regex_and_target() -> None:
    assert check({"regex": r"^\d{4}-\d{2}$"}, "2026-11")["passed"]
    assert check({"regex": "^ok", "target": "output.status"}, {"status": "ok!"})["passed"]
    failed = check({"regex": "^ok", "target": "output.status"}, {"status": "bad"})
    assert "no match for /^ok/" in failed["message"]


def test_schema() -> None:
    schema = {
        "type": "object",
        "required": ["title", "tags"],
        "properties": {"tags": {"type": "array", "minItems": 1}},
    }
    assert check({"schema": schema}, {"title": "t", "tags": ["a"]})["passed"]
    failed = check({"schema": schema}, {"title": "t", "tags": []})
    assert "schema violation at tags" in failed["message"]
    missing = check({"schema": schema}, {})
    assert (
        "'title' is a required property" in missing["message"]
        and "(and 1 more)" in missing["message"]
    )
