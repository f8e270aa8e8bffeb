"""What a local run's trace guarantees when its process is killed (kill -9) mid-run: every event
it reported as recorded is in the store, every tool call it made has its ``attempt_started``
there, the trace has no gap, and the run resumes from it (docs/architecture.md, Durability)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from clitools import DAGWRIGHT, as_json, cli

from dagwright.executors.engine import events as ev
from dagwright.executors.local import LocalExecutor
from dagwright.executors.store.sql import SqlTraceStore
from dagwright.planner.schema import Workflow
from dagwright.tools import ToolContext, ToolRegistry

STEPS = 3_000
MARKS = '''\
import time
from pathlib import Path

from dagwright.tools import tool


@tool("mark")
def mark(i: int) -> int:
    """Note that the tool was called for step i (a side effect), then take a moment."""
    with Path("marks.txt").open("a") as f:
        f.write(f"{i}\\n")
    time.sleep(0.001)
    return i
'''


def _chain(n: int) -> str:
    lines = ["name: marked-chain", "tools: [marks]", "steps:"]
    for i in range(n):
        lines += [f"  - id: s{i}", "    uses: mark", f"    with: {{i: {i}}}"]
        if i:
            lines.append(f"    needs: [s{i - 1}]")
    return "\n".join(lines) + "\n"


def test_a_run_killed_mid_way_has_every_reported_event_and_resumes(tmp_path: Path) -> None:
    (tmp_path / "marks.py").write_text(MARKS)
    (tmp_path / "chain.yaml").write_text(_chain(STEPS))
    env = {"DAGWRIGHT_HEARTBEAT": "0.2"}  # the lease lapses 0.6 s after the process is gone
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("DAGWRIGHT_")} | env
    reported: list[str] = []  # steps the run printed as finished: after their events' commit
    with subprocess.Popen([DAGWRIGHT, "run", "chain.yaml"], cwd=tmp_path, env=full_env,
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) as proc:  # fmt: skip
        assert proc.stdout is not None
        deadline = time.monotonic() + 120
        for line in proc.stdout:
            if line.startswith("  ✓ "):
                reported.append(line.split()[1])
            if len(reported) >= 500 or time.monotonic() > deadline:
                break
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    assert 500 <= len(reported) < STEPS, "killed mid-way"

    store = SqlTraceStore(str(tmp_path / ".dagwright" / "trace.db"))
    try:
        [run] = store.list_runs()
        run_id = run.record.run_id
        events = store.events(run_id)
    finally:
        store.close()
    assert [e.seq for e in events] == list(range(1, len(events) + 1)), "no gap in the trace"
    assert not any(e.type == ev.RUN_FINISHED for e in events)
    finished = {e.step for e in events if e.type == ev.STEP_FINISHED}
    assert set(reported) <= finished, "every step reported finished is recorded so"
    started = {e.step for e in events if e.type == ev.ATTEMPT_STARTED}
    called = {f"s{i}" for i in (tmp_path / "marks.txt").read_text().split()}
    assert called <= started, "every tool call's attempt_started was recorded before it"
    assert len(called) >= len(reported)

    deadline = time.monotonic() + 30  # until the lease lapses: 3 missed renewals
    while as_json(cli("show", run_id, "--json", cwd=tmp_path, env=env))["status"] != "abandoned":
        assert time.monotonic() < deadline, "the killed run never showed as abandoned"
        time.sleep(0.2)
    resumed = as_json(cli("resume", run_id, "--json", cwd=tmp_path, env=env, timeout=300))
    assert resumed["status"] == "succeeded", resumed.get("error")
    steps = resumed["steps"]
    reused = {s for s, v in steps.items() if v.get("reused_from") == run_id}
    assert set(reported) <= reused and reused <= finished
    assert all(v["status"] == "succeeded" for v in steps.values()) and len(steps) == STEPS
    ran_again = [s for s, v in steps.items() if not v.get("reused_from")]
    assert all(steps[s]["attempts"] == 1 for s in ran_again)


@pytest.mark.parametrize("kind", ["async", "sync"])
def test_a_tool_is_called_only_once_its_attempt_and_all_before_it_are_in_the_store(
    kind: str, tmp_path: Path, registry: ToolRegistry
) -> None:
    """Each tool call finds, in another connection to the store: its own ``attempt_started``
    and every event before it (its dependencies' ends): group commit never lets a tool run
    ahead of the trace. A chain and a fan-out (whose starts share one commit)."""
    db = str(tmp_path / "trace.db")
    seen: dict[str, tuple[bool, int]] = {}

    def look(ctx: ToolContext) -> None:
        reader = SqlTraceStore(db)  # another connection: sees what is committed only
        try:
            events = reader.events(ctx.run_id)
        finally:
            reader.close()
        mine = [e for e in events if e.type == ev.ATTEMPT_STARTED and e.step == ctx.step_id]
        finished = sum(1 for e in events if e.type == ev.STEP_FINISHED)
        seen[ctx.step_id] = (len(mine) == 1, finished)

    if kind == "async":

        async def probe(n: int, ctx: ToolContext) -> int:
            look(ctx)
            return n

    else:

        def probe(n: int, ctx: ToolContext) -> int:
            look(ctx)
            return n

    registry.register(probe, name="probe")
    steps = [{"id": "root", "uses": "probe", "with": {"n": 0}}]
    steps += [{"id": f"c{i}", "uses": "probe", "with": {"n": i}, "needs": [f"c{i - 1}" if i else "root"]}
              for i in range(5)]  # fmt: skip
    steps += [
        {"id": f"f{i}", "uses": "probe", "with": {"n": i}, "needs": ["c4"]} for i in range(20)
    ]
    store = SqlTraceStore(db)
    try:
        result = LocalExecutor(store, registry, max_parallel=8).run(
            Workflow.model_validate({"name": "probed", "steps": steps})
        )
    finally:
        store.close()
    assert result.status == "succeeded"
    assert all(recorded for recorded, _ in seen.values()), seen
    assert [seen[f"c{i}"][1] for i in range(5)] == [1, 2, 3, 4, 5], "its dependency's end too"
    assert all(seen[f"f{i}"][1] >= 6 for i in range(20))
