"""The LLM planner against a local OpenAI-compatible server serving recorded responses."""

from __future__ import annotations

import pytest
from openai_stub import OpenAIStub, tool_reply

from dagwright.agents.models import ModelCall, ModelSettings, connect
from dagwright.planner.llm import PlanningFailed, draft_model, plan
from dagwright.tools import ToolRegistry

INVALID = {  # an unknown tool and a cycle
    "name": "digest",
    "steps": [
        {"id": "fetch", "uses": "web.fetch", "with": {"url": "https://example.org"}},
        {"id": "a", "uses": "echo", "with": {"x": "${{ steps.b.output }}"}},
        {"id": "b", "uses": "echo", "with": {"x": "${{ steps.a.output }}"}},
    ],
}
VALID = {  # as models write them: every default spelled out too
    "name": "digest",
    "description": "",
    "steps": [
        {"id": "wait", "uses": "sleep", "with": {"ms": 5}, "needs": [], "description": ""},
        {"id": "a", "uses": "echo", "with": {"x": "${{ steps.wait.output.slept_ms }}"}},
        {"id": "b", "uses": "echo", "with": {"x": "${{ steps.a.output.x }}"}, "needs": []},
        {"id": "c", "uses": "flaky", "with": {"fail_times": 0, "message": "flaky failure"},
         "needs": ["b"], "description": "checks the service"},
    ],
    "output": "${{ steps.b.output }}",
}  # fmt: skip


def test_an_invalid_plan_is_repaired_once_and_both_attempts_are_recorded(
    registry: ToolRegistry,
) -> None:
    calls: list[ModelCall] = []
    with OpenAIStub([tool_reply("Plan", INVALID), tool_reply("Plan", VALID)]) as stub:
        model = connect("openai:stub-model", ModelSettings(base_url=stub.base_url, seed=7))
        workflow = plan(
            "summarise today's notes", registry, model, max_repairs=2, record=calls.append
        )
    assert [s.id for s in workflow.steps] == ["wait", "a", "b", "c"]
    assert len(stub.requests) == 2, "one repair"
    assert len(calls) == 2
    first, second = calls
    # the unknown tool is refused by the answer schema itself (before the cycle is looked at)
    assert (first.error or "").startswith("invalid answer: 1 validation error for Plan\nsteps.0\n")
    assert (
        "Input tag 'web.fetch' found using 'uses' does not match any of the expected tags"
        in first.error
    )
    assert second.error is None and second.model_id == "stub-model-2026-11-01"
    # each call records the usage the server reported (the openai client adds empty *_details)
    for call in calls:
        assert {k: v for k, v in (call.usage or {}).items() if v is not None} == {
            "prompt_tokens": 100, "completion_tokens": 50, "total_tokens": 150
        }  # fmt: skip
    # the repair request tells the model what was wrong
    repair_messages = stub.requests[1]["body"]["messages"]
    assert any("web.fetch" in str(m.get("content")) for m in repair_messages)
    # determinism: temperature 0 and the seed on every request
    assert all(r["body"]["temperature"] == 0 and r["body"]["seed"] == 7 for r in stub.requests)
    # the schema sent to the model only allows registered tools
    schema = stub.requests[0]["body"]["tools"][0]["function"]["parameters"]
    uses = sorted(
        d["properties"]["uses"]["const"]
        for k, d in schema["$defs"].items()
        if k.startswith("Step_")
    )
    assert uses == sorted(registry.names())


def test_a_cycle_alone_is_fed_back_as_a_validation_problem(registry: ToolRegistry) -> None:
    cyclic = {
        "name": "c",
        "steps": [
            {"id": "a", "uses": "echo", "needs": ["b"]},
            {"id": "b", "uses": "echo", "needs": ["a"]},
        ],
    }
    calls: list[ModelCall] = []
    with OpenAIStub([tool_reply("Plan", cyclic), tool_reply("Plan", VALID)]) as stub:
        model = connect("openai:stub-model", ModelSettings(base_url=stub.base_url))
        plan("t", registry, model, record=calls.append)
    assert "dependency cycle: a → b → a" in (calls[0].error or "")
    assert any(
        "dependency cycle" in str(m.get("content")) for m in stub.requests[1]["body"]["messages"]
    )


def test_a_plan_that_stays_invalid_is_refused_with_the_errors(registry: ToolRegistry) -> None:
    calls: list[ModelCall] = []
    with OpenAIStub([tool_reply("Plan", INVALID)] * 3) as stub:
        model = connect("openai:stub-model", ModelSettings(base_url=stub.base_url))
        with pytest.raises(PlanningFailed, match="no valid answer in 2 attempts") as exc:
            plan("t", registry, model, max_repairs=1, record=calls.append)
    assert exc.value.attempts == 2 and len(calls) == 2 and len(stub.requests) == 2


def test_unknown_provider_and_malformed_model_strings() -> None:
    from dagwright.errors import DagwrightError

    with pytest.raises(DagwrightError, match="unknown provider 'gpt'"):
        connect("gpt:4")
    with pytest.raises(DagwrightError, match="PROVIDER:MODEL"):
        connect("gpt-4o")


def test_the_answer_schema_is_an_enum_of_registered_tools(registry: ToolRegistry) -> None:
    model = draft_model(registry)
    with pytest.raises(ValueError, match="does not match any of the expected tags"):
        model.model_validate({"name": "x", "steps": [{"id": "a", "uses": "rm_rf"}]})
    with pytest.raises(
        ValueError, match=r"steps\.0\.sleep\.with\.x\n  Extra inputs are not permitted"
    ):
        model.model_validate(
            {"name": "x", "steps": [{"id": "a", "uses": "sleep", "with": {"ms": 1, "x": 2}}]}
        )
    ok = model.model_validate(
        {"name": "x", "steps": [{"id": "a", "uses": "sleep", "with": {"ms": 3}}]}
    )
    assert ok.as_data()["steps"][0]["with"] == {"ms": 3}


def test_dagwright_plan_writes_a_reviewable_yaml(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    import json

    from typer.testing import CliRunner

    from dagwright.cli.main import app
    from dagwright.planner.loader import load_workflow

    for key in [k for k in __import__("os").environ if k.startswith("DAGWRIGHT_")]:
        monkeypatch.delenv(key)
    with OpenAIStub([tool_reply("Plan", INVALID), tool_reply("Plan", VALID)]) as stub:
        monkeypatch.setenv("DAGWRIGHT_MODEL_BASE_URL", stub.base_url)
        out, calls = tmp_path / "plan.yaml", tmp_path / "calls.json"
        result = CliRunner().invoke(
            app,
            [
                "plan",
                "--task",
                "digest",
                "--model",
                "openai:stub",
                "-o",
                str(out),
                "--calls",
                str(calls),
            ],
        )
    assert result.exit_code == 0, result.output
    assert "after 2 model calls" in result.stderr
    assert [s.id for s in load_workflow(out).workflow.steps] == ["wait", "a", "b", "c"]
    # only decisions: no default the model spelled out (`needs: []`, `description: ''`, an
    # argument at its default value)
    written = out.read_text()
    assert "needs: []" not in written and "description: ''" not in written
    assert "message:" not in written and "fail_times: 0" in written
    assert "description: checks the service" in written and "- b" in written
    recorded = json.loads(calls.read_text())
    assert (
        len(recorded) == 2
        and recorded[0]["error"]
        and recorded[1]["model_id"] == "stub-model-2026-11-01"
    )
    ran = CliRunner().invoke(app, ["run", str(out), "--json", "--db", str(tmp_path / "t.db")])
    assert ran.exit_code == 0, ran.output
    assert json.loads(ran.stdout)["output"] == {"x": 5}


def test_run_task_plans_runs_and_keeps_the_plan_and_its_calls(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    import json

    from typer.testing import CliRunner

    from dagwright.cli.main import app
    from dagwright.executors.store.sql import SqlTraceStore
    from dagwright.planner.loader import load_workflow

    for key in [k for k in __import__("os").environ if k.startswith("DAGWRIGHT_")]:
        monkeypatch.delenv(key)
    db = str(tmp_path / "t.db")
    with OpenAIStub([tool_reply("Plan", INVALID), tool_reply("Plan", VALID)]) as stub:
        monkeypatch.setenv("DAGWRIGHT_MODEL_BASE_URL", stub.base_url)
        result = CliRunner().invoke(
            app, ["run", "--task", "digest", "--model", "openai:stub", "--json", "--db", db]
        )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["status"] == "succeeded" and data["output"] == {"x": 5}
    store = SqlTraceStore(db)
    record = store.get_run(data["run_id"])
    assert [s["id"] for s in record.workflow["steps"]] == ["wait", "a", "b", "c"], (
        "the plan is stored with the run"
    )
    calls = [e for e in store.events(data["run_id"]) if e.type == "model_call"]
    assert [c.data["purpose"] for c in calls] == ["plan", "plan"] and calls[0].data["error"]
    store.close()
    # the stored plan comes back as a workflow file (for review, or to run again)
    exported = CliRunner().invoke(app, ["show", data["run_id"][:8], "--workflow", "--db", db])
    assert exported.exit_code == 0, exported.output
    assert exported.stdout.startswith(f"# the plan of run {data['run_id']}\n")
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(exported.stdout)
    assert load_workflow(plan_file).workflow.to_data() == record.workflow
    again = CliRunner().invoke(app, ["run", str(plan_file), "--json", "--db", db])
    assert again.exit_code == 0 and json.loads(again.stdout)["output"] == {"x": 5}
    shown = json.loads(
        CliRunner().invoke(app, ["show", data["run_id"], "--json", "--db", db]).stdout
    )
    assert shown["plan"] == record.workflow and shown["plan_revisions"] == 0
    # each model call, as text: where, model, latency and usage, the messages, the answer
    text = CliRunner().invoke(app, ["show", data["run_id"], "--calls", "--db", db]).stdout
    first, second = text.split("\ncall 2 ")
    assert first.startswith("\ncall 1 (plan, planning the run): model stub-model-2026-11-01, ")
    assert "100 tokens in, 50 out" in first and "\nsystem:\nYou are the planner" in first
    assert "\nuser:\ndigest\n" in first and "\nerror: invalid answer: " in first
    assert '\nanswer:\nPlan({\n  "name": "digest",' in first
    assert second.startswith("(plan, planning the run)") and "error:" not in second
    listed = json.loads(
        CliRunner().invoke(app, ["show", data["run_id"], "--calls", "--json", "--db", db]).stdout
    )
    assert [(c["step"], c["attempt"], c["call"]["purpose"]) for c in listed] == [
        (None, None, "plan"), (None, None, "plan")
    ]  # fmt: skip
    assert [c["call"]["attempt"] for c in listed] == [1, 2], "the re-ask"
    refused = CliRunner().invoke(app, ["run", "--task", "x"])
    assert refused.exit_code == 2 and "--task needs --model" in refused.stderr


def test_a_failed_step_is_replanned_and_succeeded_steps_are_not_run_again(
    registry: ToolRegistry, tmp_path
) -> None:  # noqa: ANN001
    import io

    from rich.console import Console

    from dagwright.cli.progress import Progress
    from dagwright.executors.local import LocalExecutor
    from dagwright.executors.store.sql import SqlTraceStore
    from dagwright.planner.llm import replan
    from dagwright.planner.schema import Workflow

    original = Workflow.model_validate({
        "name": "fragile", "task": "fetch then summarise",
        "steps": [
            {"id": "fetch", "uses": "echo", "with": {"text": "raw data"}},
            {"id": "summarise", "uses": "flaky", "with": {"fail_times": 9, "message": "service gone"},
             "needs": ["fetch"], "on_failure": "replan"},
        ],
    })  # fmt: skip
    revised = {
        "name": "fragile", "steps": [
            {"id": "fetch", "uses": "echo", "with": {"text": "raw data"}},
            {"id": "summary2", "uses": "echo", "with": {"s": "${{ steps.fetch.output.text }}"}},
        ],
        "output": "${{ steps.summary2.output }}",
    }  # fmt: skip
    store = SqlTraceStore(str(tmp_path / "t.db"))
    with OpenAIStub([tool_reply("Plan", revised)]) as stub:
        model = connect("openai:stub", ModelSettings(base_url=stub.base_url))

        def replanner(wf, outputs, failure, reg, record):  # noqa: ANN001, ANN202
            return replan(wf, outputs, failure, reg, model, record=record)

        shown = io.StringIO()
        progress = Progress(
            original, enabled=True, live=False, console=Console(file=shown, width=300)
        )
        result = LocalExecutor(
            store, registry, replanner=replanner, on_event=progress.on_event
        ).run(original)
    assert result.status == "succeeded", result.error
    # live progress announces the revision: what failed, what is kept, what changed
    assert (
        "  ⟳ plan revised (revision 1) after step 'summarise' failed: service gone (attempt 1 "
        "of the first 9 that fail)\n    kept: fetch; new: summary2; dropped: summarise\n"
    ) in shown.getvalue()
    assert "  ✓ summary2  1 attempt" in shown.getvalue(), "a step the revision added"
    assert result.output == {"s": "raw data"}
    events = store.events(result.run_id)
    starts = [e.step for e in events if e.type == "attempt_started"]
    assert starts.count("fetch") == 1, "the succeeded step was kept, not run again"
    assert starts.count("summarise") == 1 and starts.count("summary2") == 1
    revision = next(e for e in events if e.type == "plan_revised")
    assert revision.data["kept"] == ["fetch"] and revision.data["failed_step"] == "summarise"
    prompt = stub.requests[0]["body"]["messages"][-1]["content"]
    assert "service gone" in prompt and "raw data" in prompt
    assert [e.data["purpose"] for e in events if e.type == "model_call"] == ["replan"]
    from dagwright.executors.summary import run_summary, state_of

    _, folded = state_of(store.get_run(result.run_id), events)
    assert folded.status == "succeeded" and folded.revisions == 1
    assert (
        run_summary(store.get_run(result.run_id), folded, "")["steps"]["summary2"]["status"]
        == "succeeded"
    )
    store.close()
    from typer.testing import CliRunner

    from dagwright.cli.main import app

    shown = CliRunner().invoke(app, ["show", result.run_id, "--db", str(tmp_path / "t.db")])
    assert shown.exit_code == 0
    assert "⟳ plan revised (revision 1) after step 'summarise' failed: service gone" in shown.stdout
    assert "kept: fetch; new: summary2; dropped: summarise" in shown.stdout
    assert "model calls: 1 (0 from the cache, 0 with an error)" in shown.stdout


def test_without_a_replanner_a_replan_step_fails_the_run(registry: ToolRegistry) -> None:
    from dagwright.executors.local import LocalExecutor
    from dagwright.executors.store.memory import MemoryTraceStore
    from dagwright.planner.schema import Workflow

    wf_ = Workflow.model_validate({"name": "x", "steps": [
        {"id": "a", "uses": "flaky", "with": {"fail_times": 3}, "on_failure": "replan"}]})  # fmt: skip
    result = LocalExecutor(MemoryTraceStore(), registry).run(wf_)
    assert result.status == "failed" and result.error["step"] == "a"


def test_the_anthropic_provider_plans_through_instructor(registry: ToolRegistry) -> None:
    pytest.importorskip("anthropic")
    from openai_stub import anthropic_tool_reply

    calls: list[ModelCall] = []
    with OpenAIStub(
        [anthropic_tool_reply("Plan", INVALID), anthropic_tool_reply("Plan", VALID)]
    ) as stub:
        model = connect("anthropic:claude-stub", ModelSettings(base_url=stub.root_url))
        workflow = plan("summarise today's notes", registry, model, record=calls.append)
    assert [s.id for s in workflow.steps] == ["wait", "a", "b", "c"]
    assert [r["path"] for r in stub.requests] == ["/v1/messages", "/v1/messages"]
    assert stub.requests[0]["body"]["max_tokens"] == 2048
    assert len(calls) == 2 and calls[0].error and calls[1].model_id == "claude-stub-2026-11-01"


def test_successful_runs_become_few_shot_examples(registry: ToolRegistry) -> None:
    from dagwright.executors.local import LocalExecutor
    from dagwright.executors.store.memory import MemoryTraceStore
    from dagwright.planner.llm import examples_from_runs, messages_for
    from dagwright.planner.schema import Workflow

    store = MemoryTraceStore()
    good = Workflow.model_validate(
        {"name": "greet", "steps": [{"id": "hi", "uses": "echo", "with": {"x": 1}}]}
    )
    bad = Workflow.model_validate(
        {"name": "broken", "steps": [{"id": "f", "uses": "flaky", "with": {"fail_times": 3}}]}
    )
    LocalExecutor(store, registry).run(good)
    LocalExecutor(store, registry).run(bad)
    shown = examples_from_runs(store, registry)
    assert len(shown) == 1 and "name: greet" in shown[0], "only successful runs"
    system = messages_for("t", registry, examples=shown)[0]["content"]
    assert "Example plan:\nname: greet" in system
