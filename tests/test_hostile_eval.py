"""Nothing a workflow contains runs unbounded.

- Verify regexes (and JSON Schema ``pattern``s) are matched by RE2, in linear time: a pattern
  that backtracks catastrophically in Python's ``re`` simply does not match; syntax RE2 does not
  have (backreferences, lookaround) is refused by validation, located.
- An attempt is one time budget: resolving its ``with``, calling its tool and verifying its
  output all count against the step's ``timeout:`` (past it: ``timed_out``, retried per policy);
  with no ``timeout:``, ``DAGWRIGHT_EVAL_TIMEOUT`` bounds the evaluation alone.
- Expressions cannot ask for huge numbers or strings (``2 ** 3000000000``, ``"a" * 10**9``).

The slow checks below are real expressions made slow by their data (an ``in`` test against a
list of a few thousand mappings, for each of them: quadratic); the timeouts are a small fraction
of what they cost.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from clitools import cli

from dagwright.errors import PlanError
from dagwright.executors.engine import events as ev
from dagwright.executors.local import LocalExecutor, RunResult
from dagwright.executors.store import MemoryTraceStore, TraceStore
from dagwright.planner.prepare import prepare
from dagwright.planner.references import ExpressionError, expression
from dagwright.planner.schema import Workflow
from dagwright.tools import ToolRegistry

CATASTROPHIC = "(a+)+$"
HOSTILE_TEXT = "a" * 40 + "!"  # Python's re: hours
SLOW = "output.xs | select('in', output.xs) | list | length > 0"
"""Quadratic in ``len(output.xs)``: seconds of CPU for the lists below."""
SLOW_ARG = "${{ inputs.xs | select('in', inputs.xs) | list | length }}"


def slow_data(n: int = 20_000) -> list[dict[str, int]]:
    return [{"k": i} for i in range(n)]


def wf(steps: list[dict[str, Any]], **extra: Any) -> Workflow:
    return Workflow.model_validate({"name": "hostile", "steps": steps, **extra})


def finished(store: TraceStore, result: RunResult, step: str) -> list[dict[str, Any]]:
    return [
        e.data
        for e in store.events(result.run_id)
        if e.type == ev.ATTEMPT_FINISHED and e.step == step
    ]


# -- regexes: linear time, or refused --------------------------------------------------------------

PURE_RUN = """
import json, sys
from dagwright.executors.local import LocalExecutor
from dagwright.executors.store import MemoryTraceStore
from dagwright.planner.schema import Workflow

store = MemoryTraceStore()
result = LocalExecutor(store).run(Workflow.model_validate(json.loads(sys.argv[1])), {})
attempts = [e.data for e in store.events(result.run_id) if e.type == "attempt_finished"]
print(json.dumps({"status": result.status, "attempts": attempts}))
"""


def pure_run(workflow: dict[str, Any]) -> dict[str, Any]:
    """A run in a fresh interpreter; the deadline only stops waiting for one that hangs."""
    try:
        out = subprocess.run(
            [sys.executable, "-c", PURE_RUN, json.dumps(workflow)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the run did not end")
    assert out.returncode == 0, out.stderr
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def test_a_catastrophic_regex_ends_the_run_and_simply_does_not_match() -> None:
    ran = pure_run(
        {
            "name": "redos",
            "steps": [
                {
                    "id": "a",
                    "uses": "echo",
                    "with": {"text": HOSTILE_TEXT},
                    "timeout": 2,
                    "verify": [{"regex": CATASTROPHIC, "target": "output.text"}],
                }
            ],
        }
    )
    assert ran["status"] == "failed"
    [attempt] = ran["attempts"]
    assert attempt["status"] == "failed"  # checked, not timed out
    assert attempt["error"]["kind"] == "verification"
    assert attempt["checks"] == [
        {
            "check": f"check 1 (regex: {CATASTROPHIC})",
            "kind": "regex",
            "passed": False,
            "message": f"check 1 (regex: {CATASTROPHIC}) failed: no match for /{CATASTROPHIC}/",
        }
    ]


def test_a_catastrophic_schema_pattern_simply_does_not_match() -> None:
    """JSON Schema ``pattern`` and ``patternProperties`` run on RE2 too."""
    schema = {
        "type": "object",
        "properties": {"text": {"type": "string", "pattern": CATASTROPHIC}},
        "patternProperties": {CATASTROPHIC: {"type": "integer"}},
    }
    ran = pure_run(
        {
            "name": "redos",
            "steps": [
                {
                    "id": "a",
                    "uses": "echo",
                    "with": {"text": HOSTILE_TEXT, HOSTILE_TEXT: 1},
                    "timeout": 2,
                    "verify": [{"schema": schema}],
                }
            ],
        }
    )
    [attempt] = ran["attempts"]
    assert attempt["status"] == "failed"
    [check] = attempt["checks"]
    assert check["passed"] is False
    assert f"schema violation at text: '{HOSTILE_TEXT}' does not match" in check["message"]


def test_regexes_re2_supports_match_as_before(
    registry: ToolRegistry,
) -> None:
    """What RE2 supports matches as before (classes, anchors, named groups, flags)."""
    store = MemoryTraceStore()
    checks = [
        {"regex": r"^(?P<year>\d{4})-\d{2}$", "target": "output.date"},
        {"regex": r"(?i)\bDAG\b", "target": "output.text"},
    ]
    workflow = wf(
        [
            {
                "id": "a",
                "uses": "echo",
                "with": {"date": "2026-11", "text": "a dag engine"},
                "verify": checks,
            }
        ]
    )
    result = LocalExecutor(store, registry).run(workflow)
    assert result.status == "succeeded"
    assert [c["passed"] for c in finished(store, result, "a")[0]["checks"]] == [True, True]


def problems(text: str, registry: ToolRegistry, tmp_path: Path) -> list[Any]:
    path = tmp_path / "wf.yaml"
    path.write_text(textwrap.dedent(text))
    with pytest.raises(PlanError) as caught:
        prepare(path, registry, inputs_required=False)
    for issue in caught.value.issues:
        assert issue.file == str(path)
    return caught.value.issues


def test_validate_refuses_regexes_re2_cannot_run_naming_where(
    registry: ToolRegistry, tmp_path: Path
) -> None:
    issues = problems(
        r"""
        name: x
        steps:
          - id: a
            uses: echo
            verify:
              - regex: '(a)\1'
              - regex: 'foo(?=bar)'
              - regex: '^\d+$'
              - schema:
                  type: object
                  properties:
                    word: {type: string, pattern: '(?<!x)y'}
                  patternProperties:
                    '(?!_)\w+': {type: string}
        """,
        registry,
        tmp_path,
    )
    by_field = {(i.step, i.field): i for i in issues}
    assert len(issues) == 4
    assert set(by_field) == {
        ("a", "verify[0].regex"),
        ("a", "verify[1].regex"),
        ("a", "verify[3].schema"),
    }
    backref = by_field[("a", "verify[0].regex")]
    assert backref.line == 7
    assert "RE2" in backref.message and "invalid escape sequence: \\1" in backref.message
    assert backref.hint is not None and "backreferences" in backref.hint
    assert "invalid perl operator: (?=" in by_field[("a", "verify[1].regex")].message
    in_schema = [i for i in issues if i.field == "verify[3].schema"]
    assert [i.line for i in in_schema] == [10, 10]
    assert "at properties/word/pattern: regex '(?<!x)y' uses syntax RE2" in in_schema[0].message
    assert "at patternProperties/(?!_)\\w+: regex" in in_schema[1].message


def test_a_rendered_regex_re2_cannot_run_fails_its_check_with_why(
    registry: ToolRegistry,
) -> None:
    """A pattern built from references is known only at run time: its check fails, saying
    so (no fallback to a backtracking engine)."""
    store = MemoryTraceStore()
    workflow = wf(
        [
            {
                "id": "a",
                "uses": "echo",
                "with": {"text": "aa"},
                "verify": [{"regex": "${{ inputs.p }}", "target": "output.text"}],
            }
        ],
        inputs={"p": {"type": "string"}},
    )
    result = LocalExecutor(store, registry).run(workflow, {"p": r"(a)\1"})
    [attempt] = finished(store, result, "a")
    [check] = attempt["checks"]
    assert check["passed"] is False
    assert "RE2" in check["message"] and "invalid escape sequence" in check["message"]


# -- an attempt is one time budget ----------------------------------------------------------------


def test_a_check_slower_than_the_timeout_times_out_the_attempt_and_is_retried(
    registry: ToolRegistry,
) -> None:
    store = MemoryTraceStore()
    workflow = wf(
        [
            {
                "id": "a",
                "uses": "echo",
                "with": {"xs": "${{ inputs.xs }}"},
                "timeout": 0.25,
                "retry": {"max_attempts": 2, "backoff": 0},
                "verify": [{"expr": SLOW}],
            }
        ],
        inputs={"xs": {"type": "array"}},
    )
    result = LocalExecutor(store, registry).run(workflow, {"xs": slow_data()})
    attempts = finished(store, result, "a")
    assert [a["status"] for a in attempts] == ["timed_out", "timed_out"]
    assert [a["error"]["kind"] for a in attempts] == ["timeout", "timeout"]
    assert attempts[0]["retry_in"] == 0 and attempts[1]["retry_in"] is None
    assert (
        "timed out after 0.25s (attempt 1) while verifying its output"
        in (attempts[0]["error"]["message"])
    )
    assert attempts[0]["checks"] == []
    assert result.status == "failed"
    assert result.state.steps["a"].status == "failed"


def test_slow_argument_resolution_counts_against_the_timeout(registry: ToolRegistry) -> None:
    store = MemoryTraceStore()
    workflow = wf(
        [{"id": "a", "uses": "echo", "with": {"n": SLOW_ARG}, "timeout": 0.25}],
        inputs={"xs": {"type": "array"}},
    )
    result = LocalExecutor(store, registry).run(workflow, {"xs": slow_data()})
    [attempt] = finished(store, result, "a")
    assert attempt["status"] == "timed_out"
    assert attempt["error"]["kind"] == "timeout"
    assert "while resolving its arguments" in attempt["error"]["message"]
    [started] = [e for e in store.events(result.run_id) if e.type == ev.ATTEMPT_STARTED]
    assert started.data["inputs"] is None  # never resolved: the tool was not called
    assert result.status == "failed"


def test_without_a_timeout_the_eval_timeout_bounds_checks_and_arguments(
    registry: ToolRegistry,
) -> None:
    store = MemoryTraceStore()
    workflow = wf(
        [
            {
                "id": "checks",
                "uses": "echo",
                "with": {"xs": "${{ inputs.xs }}"},
                "verify": [{"expr": SLOW}],
            },
            {"id": "args", "uses": "echo", "with": {"n": SLOW_ARG}},
        ],  # fmt: skip
        inputs={"xs": {"type": "array"}},
    )
    executor = LocalExecutor(store, registry, eval_timeout=0.25)
    result = executor.run(workflow, {"xs": slow_data()})
    for sid, doing in (("checks", "verifying its output"), ("args", "resolving its arguments")):
        [attempt] = finished(store, result, sid)
        assert attempt["status"] == "timed_out"
        assert attempt["error"]["kind"] == "timeout"
        message = attempt["error"]["message"]
        assert f"{doing} took longer than 0.25s (DAGWRIGHT_EVAL_TIMEOUT" in message


def test_the_eval_timeout_is_a_setting() -> None:
    from dagwright.settings import Settings

    assert Settings().eval_timeout == 10.0
    assert Settings.from_env({"DAGWRIGHT_EVAL_TIMEOUT": "2.5"}).eval_timeout == 2.5


def test_quick_checks_and_expressions_are_unaffected(registry: ToolRegistry) -> None:
    store = MemoryTraceStore()
    workflow = wf(
        [
            {
                "id": "a",
                "uses": "echo",
                "with": {"n": "${{ inputs.xs | length }}", "xs": "${{ inputs.xs }}"},
                "timeout": 30,
                "verify": [{"expr": "output.n == 3"}, {"contains": "k"}],
            }
        ],
        inputs={"xs": {"type": "array"}},
    )
    result = LocalExecutor(store, registry, eval_timeout=30).run(workflow, {"xs": slow_data(3)})
    assert result.status == "succeeded"
    [attempt] = finished(store, result, "a")
    assert [c["passed"] for c in attempt["checks"]] == [True, True]


@pytest.fixture
def slow_judge(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[float], None]]:
    """A model (the OpenAI-compatible test double) that says yes after ``seconds``."""
    import os
    import time

    from openai_stub import OpenAIStub, tool_reply

    for key in [k for k in os.environ if k.startswith("DAGWRIGHT_")]:
        monkeypatch.delenv(key)
    delay = [0.0]

    def respond(body: dict[str, Any]) -> dict[str, Any]:
        time.sleep(delay[0])
        return tool_reply("Verdict", {"reason": "fine", "passed": True})

    with OpenAIStub(respond=respond) as server:
        monkeypatch.setenv("DAGWRIGHT_MODEL_BASE_URL", server.base_url)

        def set_delay(seconds: float) -> None:
            delay[0] = seconds

        yield set_delay


JUDGED = {"id": "a", "uses": "echo", "with": {"text": "hi"},
          "verify": [{"judge": "Says hi.", "model": "openai:judge-1"}]}  # fmt: skip


def test_a_judge_slower_than_the_timeout_times_out_the_attempt(
    slow_judge: Callable[[float], None], registry: ToolRegistry
) -> None:
    """A ``judge`` check's model call is part of the attempt's budget."""
    slow_judge(3.0)
    store = MemoryTraceStore()
    step = {**JUDGED, "timeout": 0.3, "retry": {"max_attempts": 2, "backoff": 0}}
    result = LocalExecutor(store, registry).run(wf([step]))
    attempts = finished(store, result, "a")
    assert [a["status"] for a in attempts] == ["timed_out", "timed_out"]
    assert (
        "timed out after 0.3s (attempt 2) while verifying its output"
        in (attempts[1]["error"]["message"])
    )


def test_without_a_timeout_a_judge_is_not_cut_by_the_eval_timeout(
    slow_judge: Callable[[float], None], registry: ToolRegistry
) -> None:
    """DAGWRIGHT_EVAL_TIMEOUT bounds evaluation, not a model call (a step's ``timeout:`` does)."""
    slow_judge(0.6)
    store = MemoryTraceStore()
    result = LocalExecutor(store, registry, eval_timeout=0.2).run(wf([JUDGED]))
    assert result.status == "succeeded"
    [attempt] = finished(store, result, "a")
    assert attempt["checks"][0]["passed"] is True


def test_on_celery_workers_a_slow_check_times_out_and_is_retried(
    celery_cluster: Any, registry: ToolRegistry
) -> None:
    from test_executor_contract import CeleryRunner

    from dagwright.executors.store.sql import SqlTraceStore

    store = SqlTraceStore(celery_cluster.db)
    try:
        runner = CeleryRunner(store, registry, celery_cluster.broker)
        workflow = wf(
            [
                {
                    "id": "a",
                    "uses": "echo",
                    "with": {"xs": "${{ inputs.xs }}"},
                    "timeout": 0.25,
                    "retry": {"max_attempts": 2, "backoff": 0},
                    "verify": [{"expr": SLOW}],
                }
            ],
            inputs={"xs": {"type": "array"}},
        )
        result = runner.wait(runner.start(workflow, {"xs": slow_data()}))
        attempts = finished(store, result, "a")
        assert [a["status"] for a in attempts] == ["timed_out", "timed_out"]
        assert [a["error"]["kind"] for a in attempts] == ["timeout", "timeout"]
        assert "while verifying its output" in attempts[1]["error"]["message"]
        assert result.status == "failed"
    finally:
        store.close()


# -- expressions: no huge numbers or strings ----------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "needle"),
    [
        ("(2 ** 3000000000) > 1", "2 ** 3000000000 would be a number of about 3000000000 bits"),
        ("'a' * 10**9", "would make a string of 1000000000 items"),
        ("10**9 * [1]", "would make a list of 1000000000 items"),
        ("'%1000000000d' % 1", "a format width or precision of 1000000000"),
        ("'{:>1000000000}'.format(1)", "a format width or precision of 1000000000"),
        ("'x'.ljust(10**9)", "would make a string of 1000000000 items"),
        ("'x' | center(10**9)", "would make a string of 1000000000 items"),
        ("('x' * 100000).join(['y'] * 100000)", "would make a string of 10000000000 items"),
        ("('x' * 100000) | replace('', 'y' * 100000)", "would make a string of"),
        ("[1] | batch(10**9, 0) | list", "would make a list of 1000000000 items"),
        ("sum([[1] * 100000] * 100000, [])", "would make a list of 10000000000 items"),
    ],
)
def test_huge_values_are_refused_before_they_are_made(source: str, needle: str) -> None:
    with pytest.raises(ExpressionError) as caught:
        expression(source).evaluate({})
    message = str(caught.value)
    assert message.startswith(f"${{{{ {source} }}}}"), message
    assert needle in message


@pytest.mark.parametrize(
    ("source", "value"),
    [
        ("2 ** 10", 1024),
        ("(2 ** 64) > 1", True),
        ("'ab' * 3", "ababab"),
        ("[0] * 3", [0, 0, 0]),
        ("'%5d' % 42", "   42"),
        ("'{:>4}'.format('x')", "   x"),
        ("', '.join(['a', 'b'])", "a, b"),
        ("'x' | center(3)", " x "),
        ("sum([[1], [2]], [])", [1, 2]),
        ("7 % 3", 1),
        ("2.5 ** 2", 6.25),
    ],
)
def test_ordinary_arithmetic_and_strings_still_work(source: str, value: Any) -> None:
    assert expression(source).evaluate({}) == value


def test_expressions_cannot_change_the_data_they_read() -> None:
    """The run's outputs are shared by every reader: an expression cannot append to them."""
    data = {"output": {"items": [1, 2]}}
    with pytest.raises(ExpressionError) as caught:
        expression("output.items.append(3)").evaluate(data)
    assert "not allowed" in str(caught.value) or "unsafe" in str(caught.value)
    assert data["output"]["items"] == [1, 2]


def test_a_huge_power_in_a_step_fails_it_with_the_reason(registry: ToolRegistry) -> None:
    store = MemoryTraceStore()
    workflow = wf(
        [
            {
                "id": "a",
                "uses": "echo",
                "with": {"big": "${{ (2 ** 3000000000) > 1 }}"},
                "timeout": 2,
            },
            {
                "id": "b",
                "uses": "echo",
                "with": {"text": "ok"},
                "verify": [{"expr": "len('a' * 10**9) > 0"}],
            },
        ]
    )
    result = LocalExecutor(store, registry).run(workflow)
    [a] = finished(store, result, "a")
    assert a["status"] == "failed" and a["error"]["retryable"] is False
    assert "2 ** 3000000000 would be a number of about 3000000000 bits" in a["error"]["message"]
    [b] = finished(store, result, "b")
    assert b["status"] == "failed"
    assert "would make a string of 1000000000 items" in b["checks"][0]["message"]


def test_llm_generate_schemas_match_with_re2_too() -> None:
    """``llm.generate``'s ``schema`` validates the model's answer: its patterns run on RE2,
    and one RE2 cannot run fails the step, not retried."""
    from dagwright.errors import StepError
    from dagwright.tools.llm import json_schema_answer

    answer = json_schema_answer({"type": "string", "pattern": CATASTROPHIC})
    with pytest.raises(ValueError, match="does not match"):
        answer.model_validate({"value": HOSTILE_TEXT})
    with pytest.raises(StepError) as caught:
        json_schema_answer({"type": "string", "pattern": "(?=x)"})
    assert caught.value.retryable is False
    assert "at pattern: regex '(?=x)' uses syntax RE2 does not support" in str(caught.value)


# -- expressions: nested too deeply -----------------------------------------------------------------

DEEP_PARENS = "(" * 5000 + "1" + ")" * 5000
DEEP_SHAPES = [
    DEEP_PARENS,
    "[" * 5000 + "]" * 5000,
    "not " * 5000 + "true",
    "-" * 5000 + "1",
    " + ".join(["1"] * 5000),
    "inputs.x" + " | abs" * 500,
    " ".join(f"{i} if inputs.x else" for i in range(300)) + " 0",
    "(" * 33 + "1" + ")" * 33,
]


@pytest.mark.parametrize("source", DEEP_SHAPES, ids=lambda s: s[:12])
def test_an_expression_nested_too_deeply_is_refused_when_parsed(source: str) -> None:
    with pytest.raises(ExpressionError) as caught:
        expression(source)
    message = str(caught.value)
    assert "is nested too deeply (at most 32 brackets and 100 operations deep)" in message
    assert len(message) < 300  # the expression is shortened, not echoed whole


@pytest.mark.parametrize(
    ("source", "value"),
    [
        ("(" * 32 + "1" + ")" * 32, 1),
        ("'" + "(" * 100 + "'", "(" * 100),  # brackets in strings are text
        (" + ".join(["1"] * 90), 90),
        ("[" * 20 + "1" + "]" * 20 + " | length", 1),
        ("inputs.x" + " | abs" * 60, 3),
        (" ".join(f"{i} if inputs.x > 5 else" for i in range(40)) + " 0", 0),
    ],
)
def test_expressions_within_the_nesting_bounds_still_compile_and_run(
    source: str, value: Any
) -> None:
    assert expression(source).evaluate({"inputs": {"x": -3 if "abs" in source else 3}}) == value


DEEP_WORKFLOW = f"""\
name: deep
steps:
  - id: a
    uses: echo
    with:
      text: "${{{{ {DEEP_PARENS} }}}}"
    verify:
      - expr: "{DEEP_PARENS}"
      - target: "{" + ".join(["output"] * 3000)}"
        contains: x
"""


@pytest.mark.parametrize("command", ["validate", "run"])
def test_a_deeply_nested_expression_is_a_located_problem_on_the_command_line(
    tmp_path: Path, command: str
) -> None:
    (tmp_path / "deep.yaml").write_text(DEEP_WORKFLOW)
    args = [command, "deep.yaml"] + (["--db", str(tmp_path / "t.db")] if command == "run" else [])
    proc = cli(*args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    out = proc.stdout + proc.stderr
    assert "✗ 3 problems" in out
    for line, field in [(5, "with"), (8, "verify[0].expr"), (9, "verify[1].target")]:
        assert f"deep.yaml:{line}, step 'a', field '{field}': expression '" in out
    assert out.count("is nested too deeply") == 3
    assert not (tmp_path / "t.db").exists()  # nothing ran, nothing was recorded
