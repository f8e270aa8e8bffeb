"""Runs whose process stopped: SIGTERM and SIGHUP cancel a local run as Ctrl-C does; a live run
(its process renews its lease) cannot be resumed; an abandoned one is closed once, and replays
to where its process stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from clitools import DAGWRIGHT, as_json, cli

from dagwright.executors import engine
from dagwright.executors.engine import events as ev
from dagwright.executors.lifecycle import (
    LEASE,
    NewRun,
    abandoned,
    close_abandoned,
    open_run,
    renew_lease,
)
from dagwright.executors.replay import replay_run
from dagwright.executors.store import MemoryTraceStore
from dagwright.executors.store.sql import SqlTraceStore
from dagwright.planner.plan import Plan
from dagwright.planner.schema import Workflow
from dagwright.tools import default_registry

SLOW = """\
name: slow
steps:
  - id: a
    uses: echo
    with: {x: 1}
  - id: b
    uses: sleep
    with: {ms: 60000}
    needs: [a]
  - id: c
    uses: echo
    with: {y: 2}
    needs: [b]
"""
ENV = {"DAGWRIGHT_HEARTBEAT": "0.2"}


def start_run(tmp_path: Path) -> tuple[subprocess.Popen[str], str]:
    """`dagwright run` of a slow workflow in its own process, once its slow step started."""
    (tmp_path / "slow.yaml").write_text(SLOW)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DAGWRIGHT_")} | ENV
    proc = subprocess.Popen(
        [DAGWRIGHT, "run", "slow.yaml", "--json"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    db = tmp_path / ".dagwright" / "trace.db"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if db.exists():
            store = SqlTraceStore(str(db))
            try:
                runs = store.list_runs(limit=1)
                if runs and any(
                    e.type == ev.ATTEMPT_STARTED and e.step == "b"
                    for e in store.events(runs[0].record.run_id)
                ):
                    return proc, runs[0].record.run_id
            finally:
                store.close()
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("the run did not reach its slow step")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_cancel_a_local_run_like_ctrl_c(
    tmp_path: Path, sig: signal.Signals
) -> None:
    proc, run_id = start_run(tmp_path)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    summary = as_json(subprocess.CompletedProcess([], 0, stdout, stderr))
    assert summary["run_id"] == run_id and summary["status"] == "cancelled"
    shown = as_json(cli("show", run_id, "--json", cwd=tmp_path, env=ENV))
    assert shown["status"] == "cancelled"
    b = shown["steps"]["b"]
    assert b["status"] == "cancelled"
    assert [a["status"] for a in b["attempt_details"]] == ["cancelled"]
    assert shown["steps"]["c"]["status"] == "skipped"


def test_a_live_run_cannot_be_resumed(tmp_path: Path) -> None:
    proc, run_id = start_run(tmp_path)
    try:
        time.sleep(1.0)  # several lease renewals: the run is alive (not a timing assertion)
        shown = as_json(cli("show", run_id, "--json", cwd=tmp_path, env=ENV))
        assert shown["status"] == "running"
        for verb in (["resume", run_id], ["fork", run_id, "--from", "b"]):
            refused = cli(*verb, cwd=tmp_path, env=ENV)
            assert refused.returncode == 1, refused.stdout
            assert "still running in another process" in refused.stderr
        assert len(as_json(cli("runs", "--json", cwd=tmp_path, env=ENV))) == 1, "no new run"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)


# -- the lifecycle's lease, without processes -------------------------------------------------

WF = Workflow.model_validate(
    {
        "name": "w",
        "steps": [
            {"id": "a", "uses": "echo"},
            {"id": "b", "uses": "echo", "needs": ["a"]},
            {"id": "c", "uses": "echo", "needs": ["b"]},
        ],
    }  # fmt: skip
)


def test_an_abandoned_run_is_closed_once() -> None:
    store = MemoryTraceStore()
    open_run(store, NewRun(WF, {}, "r1"), executor="local", clock=lambda: 100.0)
    started = [
        ev.Event(ev.STEP_SCHEDULED, "r1", 100.0, "a", 1, {}),
        ev.Event(ev.ATTEMPT_STARTED, "r1", 100.0, "a", 1, {"attempt_id": "x"}),
    ]
    store.append("r1", started)
    renew_lease(store, "r1", 101.0)
    record = store.get_run("r1")
    state = engine.fold(Plan.from_workflow(WF), "r1", store.events("r1"))
    assert store.heartbeats("r1")[LEASE] == 101.0
    assert not abandoned(store, record, state, now=102.0, heartbeat=1.0), "renewed 1 s ago"
    assert abandoned(store, record, state, now=104.5, heartbeat=1.0), "3 renewals missed"
    assert close_abandoned(store, state, 105.0, resumed_by="r2")
    assert not close_abandoned(store, state, 106.0, resumed_by="r3"), "closed once"
    closed = engine.fold(Plan.from_workflow(WF), "r1", store.events("r1"))
    assert closed.status == "abandoned"
    assert [closed.steps[s].status for s in "abc"] == ["cancelled", "skipped", "skipped"]
    assert closed.steps["a"].attempts[0].status == "cancelled"
    finished = [e for e in store.events("r1") if e.type == ev.RUN_FINISHED]
    assert len(finished) == 1 and finished[0].data["resumed_by"] == "r2"
    assert not abandoned(store, record, closed, now=200.0, heartbeat=1.0), "ended runs are not"


# -- replaying an abandoned run ---------------------------------------------------------------


def _in_flight(store: MemoryTraceStore) -> engine.RunState:
    """Run r1 of WF, its step a running, its lease renewed at 101."""
    open_run(store, NewRun(WF, {}, "r1"), executor="local", clock=lambda: 100.0)
    started = [
        ev.Event(ev.STEP_SCHEDULED, "r1", 100.0, "a", 1, {}),
        ev.Event(ev.ATTEMPT_STARTED, "r1", 100.0, "a", 1, {"attempt_id": "x", "inputs": {}}),
    ]
    store.append("r1", started)
    renew_lease(store, "r1", 101.0)
    return engine.fold(Plan.from_workflow(WF), "r1", store.events("r1"))


@pytest.mark.parametrize("closed", [True, False], ids=["closed", "lease-expired"])
def test_an_abandoned_run_replays_to_where_it_stopped(closed: bool) -> None:
    """Closed by a resume, or not yet (its lease expired): the replay runs what the recording
    ran, stops where its process stopped, and is cancelled there; the recording is unchanged."""
    store = MemoryTraceStore()
    state = _in_flight(store)
    if closed:
        assert close_abandoned(store, state, 105.0, resumed_by="r2")
    recorded = store.events("r1")
    report = replay_run(store, "r1", default_registry, heartbeat=1.0, now=110.0)
    assert report.divergences == []
    assert (report.status, report.recorded_status) == ("cancelled", "abandoned")
    assert report.cancelled_at == [{"step": "a", "attempt": 1, "running": True}]
    assert report.as_dict()["recorded_status"] == "abandoned"
    assert store.events("r1") == recorded, "replaying does not close the recorded run"
    replayed = engine.fold(Plan.from_workflow(WF), report.run_id, store.events(report.run_id))
    assert [replayed.steps[s].status for s in "abc"] == ["cancelled", "skipped", "skipped"]


def test_a_live_run_does_not_replay_as_abandoned() -> None:
    store = MemoryTraceStore()
    _in_flight(store)
    report = replay_run(store, "r1", default_registry, heartbeat=1.0, now=102.0)
    assert report.recorded_status == "running" and report.cancelled_at == []
    assert "never finished in the recording" in report.divergences[0]["message"]


def test_replay_of_an_abandoned_run_on_the_command_line(tmp_path: Path) -> None:
    """`dagwright run` killed with SIGKILL in its slow step: `replay` says where the recording
    was abandoned and exits 0, as for a cancelled run."""
    proc, run_id = start_run(tmp_path)
    proc.kill()
    proc.communicate(timeout=30)
    deadline = time.monotonic() + 30
    while as_json(cli("show", run_id, "--json", cwd=tmp_path, env=ENV))["status"] != "abandoned":
        assert time.monotonic() < deadline, "the run never showed as abandoned"
        time.sleep(0.2)
    replayed = cli("replay", run_id, cwd=tmp_path, env=ENV)
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    text = " ".join(replayed.stdout.split())
    assert "✓ reproduced: the run stopped where it was abandoned, step for step" in text
    assert (
        "cancelled at step 'b' attempt 1 (running), where the recording was abandoned "
        "(its process stopped)" in text
    ), text
    data = as_json(cli("replay", run_id, "--json", "--no-record", cwd=tmp_path, env=ENV))
    assert data["reproduced"] is True and data["attempts_compared"] == 2
    assert (data["status"], data["recorded_status"]) == ("cancelled", "abandoned")
    assert data["cancelled_at"] == [{"step": "b", "attempt": 1, "running": True}]
    shown = as_json(cli("show", run_id, "--json", cwd=tmp_path, env=ENV))
    assert shown["status"] == "abandoned" and shown["steps"]["b"]["status"] == "running"
