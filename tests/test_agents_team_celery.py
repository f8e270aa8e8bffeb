"""The writer-and-critic team on Celery workers: real worker processes on the session's
redis-server, the agents' model answered by the local OpenAI-compatible server (a TEST DOUBLE:
``openai_stub`` + ``team_double``), the critic's tool loaded by the worker from the workflow's
folder. Then the run, executed by the workers, replays here without a model."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from clitools import REPO, as_json, cli
from conftest import AGENTS_DB, Workers, celery_env, flush_broker
from openai_stub import OpenAIStub
from team_double import DRAFT, EXCHANGE, WriterCritic, require

from dagwright.executors.engine import events as ev
from dagwright.executors.store.sql import SqlTraceStore

TEAM = """\
name: team-on-workers
tools: [text_tools]
steps:
  - id: find
    uses: echo
    with:
      passages: [{doc_id: warranty.md, chunk: 0, text: "The battery is covered for ten years."}]
  - id: refine
    uses: agents.team
    with:
      task: |
        Question: how long is the battery warranty?
        Passages (JSON): ${{ steps.find.output.passages }}
      agents:
        - {name: writer, model: "openai:stub", system: "You answer from the passages."}
        - {name: critic, model: "openai:stub", system: "You check the answer.",
           tools: [text.word_count]}
      max_turns: 6
      termination: {text_mention: APPROVED}
      answer_from: writer
    verify:
      - {grounded: true, target: output.answer}
output: ${{ steps.refine.output.answer }}
"""


class Setup:
    def __init__(self, folder: Path, stub: OpenAIStub, double: WriterCritic, broker: str) -> None:
        self.folder, self.stub, self.double, self.broker = folder, stub, double, broker
        self.db = str(folder / "trace.db")


@pytest.fixture(scope="module")
def setup(redis_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    """One worker (2 processes) whose agents ask the test double, on a private broker."""
    require("autogen_agentchat")
    folder = tmp_path_factory.mktemp("team-celery")
    (folder / "team.yaml").write_text(TEAM)
    shutil.copy(REPO / "workflows" / "examples" / "text_tools.py", folder / "text_tools.py")
    broker = f"{redis_server}/{AGENTS_DB}"
    flush_broker(broker)
    double = WriterCritic()
    with OpenAIStub(respond=double) as stub:
        env = celery_env(str(folder / "trace.db"), broker,
                         DAGWRIGHT_MODEL_BASE_URL=stub.base_url)  # fmt: skip
        workers = Workers(env, folder)
        try:
            workers.start(concurrency=2)
            yield Setup(folder, stub, double, broker)
        finally:
            workers.stop_all()
            flush_broker(broker)


def test_the_team_runs_on_celery_workers_and_replays_here(setup: Setup) -> None:
    env = {"DAGWRIGHT_DB": setup.db, "DAGWRIGHT_BROKER": setup.broker}
    proc = cli("run", "team.yaml", "--executor", "celery", "--json",
               cwd=setup.folder, env=env, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr + proc.stdout[-3000:]
    summary = as_json(proc)
    assert summary["status"] == "succeeded", summary["error"]
    assert summary["output"] == "The battery warranty lasts ten years [warranty.md#0]."
    run_id = summary["run_id"]
    store = SqlTraceStore(setup.db)
    said = [e.data for e in store.events(run_id) if e.type == ev.AGENT_MESSAGE]
    assert [(m["turn"], m["agent"], m["kind"]) for m in said] == EXCHANGE
    assert said[1]["text"] == DRAFT
    calls = [e.data for e in store.events(run_id) if e.type == ev.MODEL_CALL]
    assert [(c["agent"], c["turn"]) for c in calls] == [
        ("writer", 1), ("critic", 2), ("critic", 2), ("writer", 3), ("critic", 4), ("critic", 4)
    ]  # fmt: skip
    tools = [e.data for e in store.events(run_id) if e.type == ev.TOOL_CALL]
    assert [t["tool"] for t in tools] == ["text.word_count", "text.word_count"]
    assert len(setup.stub.requests) == 6 and setup.double.asked["other"] == 0
    started = [e for e in store.events(run_id) if e.type == ev.RUN_STARTED][0]
    assert started.data["executor"] == "celery"

    # replayed here, with no model (the endpoint points nowhere): the same exchange
    env = {"DAGWRIGHT_DB": setup.db, "DAGWRIGHT_MODEL_BASE_URL": "http://127.0.0.1:9/v1"}
    proc = cli("replay", run_id, "--json", cwd=setup.folder, env=env, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = as_json(proc)
    assert report["reproduced"] and report["model_calls_served"] == 6
    replayed = [e.data for e in store.events(report["run_id"]) if e.type == ev.AGENT_MESSAGE]
    assert replayed == said
    assert len(setup.stub.requests) == 6, "the replay asked no model"
    store.close()
