"""Each kind of verify check, passing and failing, with messages that name the check."""

from __future__ import annotations

from typing import Any

from dagwright.executors.engine import decisions
from dagwright.executors.engine import events as ev
from dagwright.executors.engine.verify import run_check, run_checks
from dagwright.executors.local import LocalExecutor
from dagwright.executors.store import MemoryTraceStore
from dagwright.planner.schema import Check, Workflow
from dagwright.tools import ToolRegistry

CTX: dict[str, Any] = {"inputs": {"min": 2, "word": "beta"}, "steps": {}}


def check(spec: dict[str, Any], output: Any) -> dict[str, Any]:
    return run_check(Check.model_validate(spec), 0, output, CTX)


def test_expr() -> None:
    assert check({"expr": "len(output.items) >= inputs.min"}, {"items": [1, 2]})["passed"]
    failed = check({"expr": "len(output.items) >= 3"}, {"items": [1]})
    assert not failed["passed"]
    assert failed["message"] == (
        "check 1 (expr: len(output.items) >= 3) failed: evaluated to False; output.items = [1]"
    )


def test_a_failed_expr_shows_the_values_it_read() -> None:
    failed = check(
        {"expr": "output.left_ms == output.right_ms and inputs.word != output.gone"},
        {"left_ms": 200, "right_ms": 400, "text": "x" * 200},
    )
    assert failed["message"].endswith(
        "evaluated to False; output.left_ms = 200, output.right_ms = 400, "
        'inputs.word = "beta", output.gone = (not there)'
    )
    long = check({"expr": "output.text | length < 2"}, {"text": "y" * 200})["message"]
    shown = long.split("; output.text = ")[1]
    assert len(shown) == 80 and shown.startswith('"yyy') and shown.endswith("…")


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


def test_labels_are_rendered_like_the_values() -> None:
    failed = check({"contains": "${{ inputs.word }}"}, "alpha")
    assert failed["check"] == "check 1 (contains: beta)"
    assert failed["message"] == "check 1 (contains: beta) failed: 'beta' not found in the output"
    named = check({"regex": "^${{ inputs.word }}$", "name": "is ${{ inputs.word }}"}, "alpha")
    assert named["message"] == "is beta failed: no match for /^beta$/"


def test_a_label_that_cannot_render_stays_as_written() -> None:
    failed = check({"contains": "${{ inputs.nope }}"}, "alpha")
    assert failed["check"] == "check 1 (contains: ${{ inputs.nope }})"
    assert "no field 'nope'" in failed["message"]


def test_run_checks_renders_every_label() -> None:
    checks = [Check.model_validate({"not_contains": "${{ inputs.word }}"}), Check(regex="^a")]
    results = run_checks(checks, "beta", CTX)
    assert [r["check"] for r in results] == ["check 1 (not_contains: beta)", "check 2 (regex: ^a)"]
    assert (
        results[0]["message"] == "check 1 (not_contains: beta) failed: 'beta' found in the output"
    )


def test_the_recorded_failure_names_the_rendered_value(registry: ToolRegistry) -> None:
    """What the next attempt is told (llm.generate: "Your previous answer was rejected: …")."""
    workflow = Workflow.model_validate(
        {
            "name": "labels",
            "inputs": {"topic": {"type": "string", "default": "graphs"}},
            "steps": [
                {
                    "id": "say",
                    "uses": "echo",
                    "with": {"text": "nothing relevant"},
                    "verify": [{"contains": "${{ inputs.topic }}"}],
                    "retry": {"max_attempts": 2, "backoff": 0},
                }
            ],
        }
    )
    store = MemoryTraceStore()
    result = LocalExecutor(store, registry).run(workflow)
    assert result.status == "failed"
    errors = [
        e.data["error"]["message"]
        for e in store.events(result.run_id)
        if e.type == ev.ATTEMPT_FINISHED and e.data.get("error")
    ]
    assert len(errors) == 2
    for message in errors:
        assert "check 1 (contains: graphs) failed: 'graphs' not found" in message
        assert "${{" not in message
    told = decisions.previous_failure(result.state, "say", 2)
    assert told is not None and "contains: graphs" in told and "${{" not in told
