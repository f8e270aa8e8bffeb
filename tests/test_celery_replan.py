"""Replanning on Celery workers, driven from the command line as users run it: the run is
followed to its end under the revised plan, and a revision may use the workflow's own tools —
as it may locally. Real worker processes on the session's redis-server; the planner's model is
a local OpenAI-compatible TEST DOUBLE (``openai_stub``)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from clitools import as_json, cli
from conftest import REPLAN_DB, Workers, celery_env, flush_broker
from openai_stub import OpenAIStub, tool_reply

from dagwright.executors.engine import events as ev
from dagwright.executors.store.sql import SqlTraceStore

FRAGILE = """\
name: fragile
tools: [shout_tools]
steps:
  - id: fetch
    uses: echo
    with: {text: raw data}
  - id: summarise
    uses: flaky
    with: {fail_times: 9}
    needs: [fetch]
    on_failure: replan
"""
SHOUT_TOOLS = """\
from dagwright import tool


@tool("shout.upper", replay="rerun")
def upper(text: str) -> dict[str, str]:
    \"\"\"The text in capitals.\"\"\"
    return {"text": text.upper()}
"""
FETCH = {"id": "fetch", "uses": "echo", "with": {"text": "raw data"}}


def revision(step: dict[str, Any]) -> dict[str, Any]:
    """The model's revised plan: `fetch` kept, then a new step (a tool call reply)."""
    plan = {
        "name": "fragile",
        "steps": [FETCH, step],
        "output": f"${{{{ steps.{step['id']}.output }}}}",
    }
    return tool_reply("Plan", plan)


class Setup:
    def __init__(self, folder: Path, stub: OpenAIStub, db: str, broker: str) -> None:
        self.folder, self.stub, self.db, self.broker = folder, stub, db, broker
        self.workflow = folder / "fragile.yaml"

    def env(self) -> dict[str, str]:
        return {"DAGWRIGHT_DB": self.db, "DAGWRIGHT_BROKER": self.broker}


@pytest.fixture(scope="module")
def setup(redis_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    """One worker (2 processes) whose replanner asks the test double, on a private broker."""
    folder = tmp_path_factory.mktemp("replan")
    (folder / "fragile.yaml").write_text(FRAGILE)
    (folder / "shout_tools.py").write_text(SHOUT_TOOLS)
    broker = f"{redis_server}/{REPLAN_DB}"
    flush_broker(broker)
    with OpenAIStub() as stub:
        db = str(folder / "trace.db")
        env = celery_env(
            db, broker, DAGWRIGHT_MODEL="openai:stub", DAGWRIGHT_MODEL_BASE_URL=stub.base_url
        )
        workers = Workers(env, folder)
        try:
            workers.start(concurrency=2)
            yield Setup(folder, stub, db, broker)
        finally:
            workers.stop_all()
            flush_broker(broker)


def started(db: str, run_id: str) -> Counter[str | None]:
    store = SqlTraceStore(db)
    try:
        return Counter(e.step for e in store.events(run_id) if e.type == ev.ATTEMPT_STARTED)
    finally:
        store.close()


def test_run_on_celery_follows_a_replanned_run_to_its_end(setup: Setup) -> None:
    """`run --executor celery` (no --detach) follows the trace; the revision adds a step the
    first plan did not have (the follower used to fold with the first plan: KeyError)."""
    setup.stub.replies.append(
        revision({"id": "digest", "uses": "echo", "with": {"d": "${{ steps.fetch.output.text }}"}})
    )
    proc = cli("run", str(setup.workflow), "--executor", "celery", "--json",
               cwd=setup.folder, env=setup.env(), timeout=90)  # fmt: skip
    assert proc.returncode == 0, proc.stderr + proc.stdout[-3000:]
    assert "Traceback" not in proc.stderr
    summary = as_json(proc)
    assert summary["status"] == "succeeded", summary["error"]
    assert summary["output"] == {"d": "raw data"}
    assert list(summary["steps"]) == ["fetch", "digest"], "the summary shows the revised plan"
    assert summary["steps"]["digest"]["attempts"] == 1
    assert started(setup.db, summary["run_id"]) == {"fetch": 1, "summarise": 1, "digest": 1}


def test_a_revision_may_use_the_workflow_s_own_tools_on_celery_as_locally(
    setup: Setup, tmp_path: Path
) -> None:
    """The workers validate (and ask for) the revised plan with the run's registry, which holds
    the workflow's `tools:`; they used to use the default registry and refuse it."""
    loud = {"id": "loud", "uses": "shout.upper", "with": {"text": "${{ steps.fetch.output.text }}"}}
    setup.stub.replies.append(revision(loud))
    proc = cli("run", str(setup.workflow), "--executor", "celery", "--json",
               cwd=setup.folder, env=setup.env(), timeout=90)  # fmt: skip
    assert proc.returncode == 0, proc.stderr + proc.stdout[-3000:]
    on_celery = as_json(proc)
    assert on_celery["status"] == "succeeded", on_celery["error"]
    assert on_celery["output"] == {"text": "RAW DATA"}
    assert started(setup.db, on_celery["run_id"]) == {"fetch": 1, "summarise": 1, "loud": 1}
    # the replanner was shown the workflow's own tool among those it may use
    request = setup.stub.requests[-1]["body"]
    assert "shout.upper" in str(request["tools"])

    # the same run in this process: the same revision is accepted, with the same output
    setup.stub.replies.append(revision(loud))
    local_db = str(tmp_path / "local.db")
    env = {"DAGWRIGHT_DB": local_db, "DAGWRIGHT_MODEL_BASE_URL": setup.stub.base_url}
    proc = cli("run", str(setup.workflow), "--model", "openai:stub", "--json",
               cwd=setup.folder, env=env, timeout=90)  # fmt: skip
    assert proc.returncode == 0, proc.stderr + proc.stdout[-3000:]
    locally = as_json(proc)
    assert (locally["status"], locally["output"]) == (on_celery["status"], on_celery["output"])
    assert list(locally["steps"]) == list(on_celery["steps"]) == ["fetch", "loud"]
