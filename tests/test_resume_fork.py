"""resume, fork and diff, through the installed CLI (and on Celery workers)."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

import pytest
from clitools import as_json, cli
from conftest import Cluster

from dagwright.executors.engine import events as ev
from dagwright.executors.store.sql import SqlTraceStore

FAILING = """\
name: resume-demo
inputs:
  who: {type: string, default: world}
steps:
  - id: a
    uses: sleep
    with: {ms: 1500}
  - id: b
    uses: echo
    with:
      greeting: "hello ${{ inputs.who }}"
      slept: ${{ steps.a.output.slept_ms }}
  - id: c
    uses: flaky
    with: {fail_times: 3, value: "${{ steps.b.output.greeting }}"}
    retry: {max_attempts: 1}
"""


@pytest.fixture
def failed_run(tmp_path: Path) -> tuple[str, Path]:
    (tmp_path / "wf.yaml").write_text(FAILING)
    (tmp_path / "fixed.yaml").write_text(FAILING.replace("fail_times: 3", "fail_times: 0"))
    proc = cli("run", "wf.yaml", "--json", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    data = as_json(proc)
    assert data["status"] == "failed" and data["error"]["step"] == "c"
    text = cli("run", "wf.yaml", cwd=tmp_path).stdout  # what a person reads
    assert "replay: dagwright replay " in text
    # what to do next names the workflow's own file, and the resume without an edit
    shown = re.search(r"\nrun (\w+)  failed", text)
    assert shown is not None, text
    again = shown.group(1)
    assert f"fix wf.yaml, then go on: dagwright resume {again} --workflow wf.yaml\n" in text
    assert f"or, once what it called works again: dagwright resume {again}\n" in text
    return data["run_id"], tmp_path


def _events(tmp_path: Path, run_id: str) -> list[Any]:
    store = SqlTraceStore(str(tmp_path / ".dagwright" / "trace.db"))
    try:
        return store.events(run_id)
    finally:
        store.close()


def _runs(tmp_path: Path) -> int:
    return len(as_json(cli("runs", "--json", cwd=tmp_path)))


def test_resume_after_fixing_the_workflow_reuses_the_slow_step(
    failed_run: tuple[str, Path],
) -> None:
    parent, tmp_path = failed_run
    proc = cli("resume", parent, "--workflow", "fixed.yaml", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    child = as_json(proc)
    assert child["status"] == "succeeded" and child["output"] == {"c": "hello world"}
    assert child["lineage"] == {"parent": parent, "mode": "resume", "from_steps": ["c"]}
    # the 1.5 s step did not run again: no attempt, no start, no duration of its own in this run
    for sid in ("a", "b"):
        assert child["steps"][sid] | {"finished_at": None} == {
            "status": "succeeded", "attempts": 0, "started_at": None, "finished_at": None,
            "duration": None, "reused_from": parent,
        }, sid  # fmt: skip
    assert child["steps"]["c"]["attempts"] == 1
    assert sum(s["attempts"] for s in child["steps"].values()) == 1, "only c ran"
    # the parent is untouched: a ran once, c failed once
    shown = as_json(cli("show", parent, "--json", cwd=tmp_path))
    assert shown["steps"]["a"]["attempts"] == 1 and shown["status"] == "failed"
    events = _events(tmp_path, child["run_id"])
    assert not [e for e in events if e.type == ev.ATTEMPT_STARTED and e.step in ("a", "b")]
    reused = [e for e in events if e.type == ev.STEP_FINISHED and e.data.get("reused")]
    assert [e.step for e in reused] == ["a", "b"]
    assert reused[0].data["output"] == {"slept_ms": 1500}
    assert reused[0].data["reused"]["inputs"] == {"ms": 1500}
    text = cli("show", child["run_id"], cwd=tmp_path).stdout
    assert f"lineage: resume of run {parent}, from step c" in text
    assert f"reused from run {parent}" in text


def test_resume_refuses_an_edit_to_a_reused_step(failed_run: tuple[str, Path]) -> None:
    parent, tmp_path = failed_run
    edited = FAILING.replace("fail_times: 3", "fail_times: 0").replace('"hello', '"bye')
    (tmp_path / "edited.yaml").write_text(edited)
    before = _runs(tmp_path)
    proc = cli("resume", parent, "--workflow", "edited.yaml", cwd=tmp_path)
    assert proc.returncode == 2
    assert "edited.yaml:10, step 'b', field 'with'" in proc.stderr
    assert "its recorded output would be reused" in proc.stderr and "--from b" in proc.stderr
    assert _runs(tmp_path) == before, "nothing was recorded"
    # naming it in --from runs it again
    proc = cli("resume", parent, "--workflow", "edited.yaml", "--from", "b", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    data = as_json(proc)
    assert data["output"] == {"c": "bye world"}
    assert data["steps"]["a"]["reused_from"] == parent and data["steps"]["b"]["attempts"] == 1


def test_resume_refuses_inputs_that_change_a_reused_steps_arguments(
    failed_run: tuple[str, Path],
) -> None:
    parent, tmp_path = failed_run
    proc = cli("resume", parent, "--workflow", "fixed.yaml", "--input", "who=you", cwd=tmp_path)
    assert proc.returncode == 2
    # the field that differs, not two blobs; and the --from that makes it valid
    assert (
        "step 'b' would now get other arguments than its recorded output came from "
        '(with.greeting: "hello world" → "hello you"): the run\'s inputs changed'
    ) in proc.stderr
    assert "→ run it again: --from b; or keep the inputs" in proc.stderr
    proc = cli(
        "resume", parent, "--workflow", "fixed.yaml", "--input", "who=you", "--from", "b",
        "--json", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert as_json(proc)["output"] == {"c": "hello you"}


def test_resume_without_a_fix_fails_again_and_bad_from_is_refused(
    failed_run: tuple[str, Path],
) -> None:
    parent, tmp_path = failed_run
    again = as_json(cli("resume", parent, "--json", cwd=tmp_path))
    assert again["status"] == "failed" and again["steps"]["a"]["reused_from"] == parent
    proc = cli("resume", parent, "--from", "nope", cwd=tmp_path)
    assert proc.returncode == 2 and "--from 'nope': no such step" in proc.stderr
    assert "steps: a, b, c" in proc.stderr


def test_a_resumed_run_resumed_again_points_at_the_run_that_executed(
    failed_run: tuple[str, Path],
) -> None:
    parent, tmp_path = failed_run
    first = as_json(cli("resume", parent, "--json", cwd=tmp_path))  # fails again at c
    second = as_json(cli("resume", first["run_id"], "--workflow", "fixed.yaml", "--json",
                         cwd=tmp_path))  # fmt: skip
    assert second["status"] == "succeeded"
    assert second["steps"]["a"]["reused_from"] == parent
    proc = cli("resume", second["run_id"], cwd=tmp_path)
    assert proc.returncode == 2 and "nothing to run again" in proc.stderr


def test_fork_and_diff(failed_run: tuple[str, Path]) -> None:
    parent, tmp_path = failed_run
    proc = cli("fork", parent, "--from", "c", "--set", "steps.c.with.fail_times=0", "--json",
               cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    fork = as_json(proc)
    assert fork["status"] == "succeeded"
    assert fork["lineage"] == {"parent": parent, "mode": "fork", "from_steps": ["c"]}
    diff = as_json(cli("diff", parent, fork["run_id"], "--json", cwd=tmp_path))
    assert diff["identical"] == ["a", "b"]
    assert list(diff["steps"]) == ["c"]
    c = diff["steps"]["c"]
    assert c["differs"] == ["status", "inputs", "output", "error"]
    assert c["a"]["inputs"]["fail_times"] == 3 and c["b"]["inputs"]["fail_times"] == 0
    assert (c["a"]["output"], c["b"]["output"]) == (None, "hello world")
    assert diff["run"]["status"] == {"a": "failed", "b": "succeeded"}
    text = cli("diff", parent, fork["run_id"], cwd=tmp_path).stdout
    assert '-  "fail_times": 3,' in text and '+  "fail_times": 0,' in text
    assert "2 steps identical: a, b" in text
    # a change upstream of --from would make a reused output wrong: refused
    proc = cli("fork", parent, "--from", "c", "--set", "steps.a.with.ms=1", cwd=tmp_path)
    assert proc.returncode == 2
    assert f"step 'a' changed since run {parent} (with.ms: 1500 → 1)" in proc.stderr
    assert "→ run it again: --from a; or undo the change" in proc.stderr, "a covers c"
    # an input set with --from too late names the step it changes
    proc = cli("fork", parent, "--from", "c", "--set", "inputs.who=you", cwd=tmp_path)
    assert proc.returncode == 2 and '(with.greeting: "hello world" → "hello you")' in proc.stderr
    assert "→ run it again: --from b; or keep the inputs" in proc.stderr
    proc = cli("fork", parent, "--set", "steps.zz.with.x=1", cwd=tmp_path)
    assert proc.returncode == 2 and "no step 'zz'" in proc.stderr
    proc = cli("fork", parent, "--set", "steps.c.with.fail_times=-1", cwd=tmp_path)
    assert proc.returncode == 2 and "fail_times" in proc.stderr


def test_fork_without_from_runs_from_the_changed_step(failed_run: tuple[str, Path]) -> None:
    parent, tmp_path = failed_run
    fork = as_json(cli("fork", parent, "--set", "steps.b.with.greeting=hi", "--set",
                       "steps.c.retry.max_attempts=4", "--json", cwd=tmp_path))  # fmt: skip
    assert fork["lineage"]["from_steps"] == ["b", "c"]
    assert fork["status"] == "succeeded" and fork["output"] == {"c": "hi"}
    assert fork["steps"]["c"]["attempts"] == 4
    # an input changed without --from: the steps whose arguments it changes run again
    fork = as_json(cli("fork", parent, "--set", "inputs.who=you", "--set",
                       "steps.c.with.fail_times=0", "--json", cwd=tmp_path))  # fmt: skip
    assert fork["lineage"]["from_steps"] == ["b", "c"] and fork["output"] == {"c": "hello you"}
    assert fork["steps"]["a"]["reused_from"] == parent


def test_resume_and_replay_a_run_executed_on_celery(
    tmp_path: Path, celery_cluster: Cluster
) -> None:
    db = celery_cluster.db
    env = {"DAGWRIGHT_DB": db, "DAGWRIGHT_BROKER": celery_cluster.broker}
    (tmp_path / "wf.yaml").write_text(FAILING.replace("ms: 1500", "ms: 300"))
    (tmp_path / "fixed.yaml").write_text(FAILING.replace("ms: 1500", "ms: 300").replace(
        "fail_times: 3", "fail_times: 0"))  # fmt: skip
    proc = cli("run", "wf.yaml", "--executor", "celery", "--json", cwd=tmp_path, env=env)
    # exit code 1 is also what a crash gives: the run must have failed, not the command
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert as_json(proc)["status"] == "failed"
    parent = as_json(proc)["run_id"]
    proc = cli("resume", parent, "--workflow", "fixed.yaml", "--executor", "celery", "--json",
               cwd=tmp_path, env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    child = as_json(proc)
    assert child["status"] == "succeeded" and child["steps"]["a"]["reused_from"] == parent
    store = SqlTraceStore(db)
    try:
        events = store.events(child["run_id"])
        assert store.get_run(child["run_id"]).executor == "celery"
    finally:
        store.close()
    assert not [e for e in events if e.type == ev.ATTEMPT_STARTED and e.step in ("a", "b")]
    proc = cli("fork", parent, "--set", "steps.c.with.fail_times=0", "--executor", "celery",
               "--json", cwd=tmp_path, env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    fork = as_json(proc)
    assert fork["status"] == "succeeded" and fork["steps"]["b"]["reused_from"] == parent
    diff = as_json(cli("diff", child["run_id"], fork["run_id"], "--json", cwd=tmp_path, env=env))
    assert diff["steps"] == {} and diff["identical"] == ["a", "b", "c"]
    # a run executed by the workers replays here, locally, from its trace
    for run_id in (parent, child["run_id"]):
        proc = cli("replay", run_id, "--json", cwd=tmp_path, env=env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert as_json(proc)["reproduced"] is True


def test_a_local_run_killed_mid_step_is_resumed_once(tmp_path: Path) -> None:
    """kill -9 of a local run: it shows as abandoned once its lease lapses, is resumed (and
    closed as abandoned, naming the run that resumed it), and cannot be resumed again."""
    import signal
    import subprocess

    from clitools import DAGWRIGHT

    slow = FAILING.replace("ms: 1500", "ms: 0").replace(
        "fail_times: 3", "fail_times: 0"
    ).replace("    retry: {max_attempts: 1}\n", "") + (
        "  - id: d\n    uses: sleep\n    with: {ms: 60000}\n    needs: [c]\n"
        "  - id: e\n    uses: echo\n    with: {after: '${{ steps.d.output.slept_ms }}'}\n"
    )  # fmt: skip
    (tmp_path / "slow.yaml").write_text(slow)
    (tmp_path / "quick.yaml").write_text(slow.replace("ms: 60000", "ms: 5"))
    env = {"DAGWRIGHT_HEARTBEAT": "0.2"}  # the lease: renewed every 0.2 s, lapsed after 0.6 s
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("DAGWRIGHT_")} | env
    proc = subprocess.Popen([DAGWRIGHT, "run", "slow.yaml"], cwd=tmp_path, env=full_env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    db = tmp_path / ".dagwright" / "trace.db"
    deadline = time.monotonic() + 30
    run_id = None
    while time.monotonic() < deadline:
        runs = as_json(cli("runs", "--json", cwd=tmp_path, env=env)) if db.exists() else []
        if runs:
            run_id = runs[0]["run_id"]
            if any(
                e.type == ev.ATTEMPT_STARTED and e.step == "d" for e in _events(tmp_path, run_id)
            ):
                break
        time.sleep(0.1)
    assert run_id is not None
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    deadline = time.monotonic() + 20  # until the lease lapses: 3 missed renewals
    while as_json(cli("show", run_id, "--json", cwd=tmp_path, env=env))["status"] != "abandoned":
        assert time.monotonic() < deadline, "the killed run never showed as abandoned"
        time.sleep(0.2)
    listed = as_json(cli("runs", "--status", "abandoned", "--json", cwd=tmp_path, env=env))
    assert [r["run_id"] for r in listed] == [run_id]
    resumed = as_json(
        cli("resume", run_id, "--workflow", "quick.yaml", "--json", cwd=tmp_path, env=env)
    )
    assert resumed["status"] == "succeeded", resumed
    assert [s for s, v in resumed["steps"].items() if v.get("reused_from")] == ["a", "b", "c"]
    assert resumed["steps"]["d"]["attempts"] == 1 and resumed["output"]["e"] == {"after": 5}
    # the parent is closed: d cancelled, e skipped, the run abandoned, naming its resumption
    parent = _events(tmp_path, run_id)
    finished = [e for e in parent if e.type == ev.RUN_FINISHED]
    assert len(finished) == 1 and finished[0].data["status"] == "abandoned"
    assert finished[0].data["resumed_by"] == resumed["run_id"]
    steps = as_json(cli("show", run_id, "--json", cwd=tmp_path, env=env))["steps"]
    assert (steps["d"]["status"], steps["e"]["status"]) == ("cancelled", "skipped")
    again = cli("resume", run_id, "--workflow", "quick.yaml", cwd=tmp_path, env=env)
    assert again.returncode == 1 and "Traceback" not in again.stderr
    assert f"resumed as run {resumed['run_id']} already" in again.stderr
