"""The command line, run as users run it: the installed `dagwright` script in a subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from clitools import DAGWRIGHT, REPO, as_json, cli

NEEDS_SETUP = {
    "research.yaml": "test_research_example.py",
    "critique.yaml": "test_agents_team.py",  # against the OpenAI-compatible test double
}
"""Examples that need an index, a model and a service: each has a test of its own."""
EXAMPLES = [
    p for p in sorted((REPO / "workflows" / "examples").glob("*.yaml")) if p.name not in NEEDS_SETUP
]


def test_the_examples_that_need_setup_have_their_own_tests() -> None:
    for example, test in NEEDS_SETUP.items():
        assert (REPO / "workflows" / "examples" / example).is_file()
        assert example in (REPO / "tests" / test).read_text()


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_every_example_runs_offline(example: Path, tmp_path: Path) -> None:
    proc = cli("run", str(example), "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    data = as_json(proc)
    assert data["status"] == "succeeded"
    assert set(data) >= {"run_id", "status", "output", "steps"}
    for step in data["steps"].values():
        assert step["status"] == "succeeded" and step["attempts"] >= 1
        assert step["started_at"].endswith("+00:00") and step["finished_at"] >= step["started_at"]
    assert (tmp_path / ".dagwright" / "trace.db").is_file(), "the embedded default trace store"


def test_run_prints_what_to_do_next(tmp_path: Path) -> None:
    proc = cli("run", str(REPO / "workflows/examples/retries.yaml"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "↻ call_api attempt 1 failed: 503 Service Unavailable (simulated)" in out
    assert "succeeded" in out and "trace: " + str(tmp_path / ".dagwright" / "trace.db") in out
    run_id = out.split("inspect: dagwright show ")[1].split()[0]
    show = cli("show", run_id[:8], cwd=tmp_path)
    assert show.returncode == 0
    assert "call_api attempt 1 failed" in show.stdout and "retried after 0.2s" in show.stdout
    trace = cli("trace", run_id, "--json", cwd=tmp_path)
    events = as_json(trace)
    assert [e["type"] for e in events][0] == "run_started" and events[-1]["type"] == "run_finished"
    assert sum(e["type"] == "attempt_started" and e["step"] == "call_api" for e in events) == 3


def test_failed_run_exits_1_and_names_the_step(tmp_path: Path) -> None:
    wf = tmp_path / "fail.yaml"
    wf.write_text(
        "name: fail\nsteps:\n  - id: boom\n    uses: flaky\n    with: {fail_times: 5}\n"
        "    retry: {max_attempts: 2, backoff: 0}\n  - {id: after, uses: echo, needs: [boom]}\n"
    )
    proc = cli("run", str(wf), "--json", cwd=tmp_path)
    assert proc.returncode == 1
    data = as_json(proc)
    assert data["status"] == "failed" and data["error"]["step"] == "boom"
    assert data["steps"]["boom"] | {"started_at": None, "finished_at": None, "duration": None} == {
        "status": "failed",
        "attempts": 2,
        "started_at": None,
        "finished_at": None,
        "duration": None,
        "error": "flaky failure (attempt 2 of the first 5 that fail)",
    }
    assert data["steps"]["after"]["status"] == "skipped"
    human = cli("run", str(wf), cwd=tmp_path)
    assert human.returncode == 1 and "error: step 'boom': flaky failure" in human.stdout
    runs = as_json(cli("runs", "--status", "failed", "--json", cwd=tmp_path))
    assert len(runs) == 2 and {r["status"] for r in runs} == {"failed"}
    assert as_json(cli("runs", "--status", "succeeded", "--json", cwd=tmp_path)) == []


def test_invalid_workflow_exits_2_and_runs_nothing(tmp_path: Path) -> None:
    wf = tmp_path / "bad.yaml"
    wf.write_text(
        "name: bad\nsteps:\n  - {id: a, uses: sleep, with: {ms: 1}}\n"
        "  - {id: b, uses: echo, with: {x: '${{ steps.a.output.nope }}'}}\n"
    )
    for command in (["validate", str(wf)], ["run", str(wf)]):
        proc = cli(*command, cwd=tmp_path)
        assert proc.returncode == 2
        assert f"{wf}:4, step 'b', field 'with.x'" in proc.stderr
        assert "output has no field 'nope'" in proc.stderr
    assert not (tmp_path / ".dagwright").exists(), "nothing ran, nothing was recorded"
    data = as_json(cli("validate", str(wf), "--json", cwd=tmp_path))
    assert data["valid"] is False and data["errors"][0]["line"] == 4


def test_inputs_are_validated_before_running(tmp_path: Path) -> None:
    wf = tmp_path / "inputs.yaml"
    wf.write_text(
        "name: in\ninputs:\n  n: {type: integer}\nsteps:\n"
        "  - {id: a, uses: sleep, with: {ms: '${{ inputs.n }}'}}\n"
    )
    missing = cli("run", str(wf), cwd=tmp_path)
    assert missing.returncode == 2 and "missing required input 'n' (integer)" in missing.stderr
    wrong = cli("run", str(wf), "--input", "n=ten", cwd=tmp_path)
    assert wrong.returncode == 2 and "input 'n' must be integer" in wrong.stderr
    assert cli("validate", str(wf), "-i", "x=1", cwd=tmp_path).returncode == 2
    assert not (tmp_path / ".dagwright").exists()
    ok = cli("run", str(wf), "--input", "n=5", "--json", cwd=tmp_path)
    assert ok.returncode == 0 and as_json(ok)["output"] == {"a": {"slept_ms": 5}}
    assert cli("validate", str(wf), cwd=tmp_path).returncode == 0


def test_db_option_and_environment(tmp_path: Path) -> None:
    db = tmp_path / "elsewhere" / "runs.db"
    proc = cli(
        "run",
        str(REPO / "workflows/examples/diamond.yaml"),
        "--db",
        str(db),
        "--json",
        "--input",
        "delay_ms=10",
        cwd=tmp_path,
    )
    assert proc.returncode == 0 and as_json(proc)["trace"] == str(db)
    env_runs = as_json(cli("runs", "--json", cwd=tmp_path, env={"DAGWRIGHT_DB": str(db)}))
    assert [r["run_id"] for r in env_runs] == [as_json(proc)["run_id"]]
    unknown = cli("runs", cwd=tmp_path, env={"DAGWRIGHT_DBB": "x"})
    assert unknown.returncode == 2 and "unknown setting(s) DAGWRIGHT_DBB" in unknown.stderr
    assert cli("show", "nosuchrun", cwd=tmp_path, env={"DAGWRIGHT_DB": str(db)}).returncode == 1


def test_postgres_store_by_url(tmp_path: Path, pg_url: str) -> None:
    proc = cli(
        "run", str(REPO / "workflows/examples/retries.yaml"), "--db", pg_url, "--json", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    data = as_json(proc)
    assert data["trace"].startswith("postgresql://") and data["steps"]["call_api"]["attempts"] == 3
    shown = as_json(cli("show", data["run_id"], "--json", "--db", pg_url, cwd=tmp_path))
    assert len(shown["steps"]["call_api"]["attempt_details"]) == 3


def test_ctrl_c_cancels_and_leaves_a_consistent_trace(tmp_path: Path) -> None:
    wf = tmp_path / "long.yaml"
    wf.write_text(
        "name: long\nsteps:\n  - {id: first, uses: sleep, with: {ms: 1}}\n"
        "  - {id: long, uses: sleep, with: {ms: 30000}, needs: [first]}\n"
        "  - {id: after, uses: echo, needs: [long]}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("DAGWRIGHT_")}
    env["PYTHONFAULTHANDLER"] = "1"  # SIGABRT on a hang prints every thread's stack (below)
    proc = subprocess.Popen(
        [DAGWRIGHT, "run", str(wf), "--json"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    db = tmp_path / ".dagwright" / "trace.db"
    deadline = time.monotonic() + 20
    long_started = False
    while not long_started and time.monotonic() < deadline:
        runs = as_json(cli("runs", "--json", cwd=tmp_path)) if db.exists() else []
        if runs:
            events = as_json(cli("trace", runs[0]["run_id"], "--json", cwd=tmp_path))
            long_started = any(
                e["type"] == "attempt_started" and e["step"] == "long" for e in events
            )
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    try:
        stdout, stderr = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        _, stderr = proc.communicate(timeout=20)
        pytest.fail(f"no exit 20 s after Ctrl-C (long step started: {long_started}):\n{stderr}")
    assert proc.returncode == 130, stderr
    data = json.loads(stdout)
    assert data["status"] == "cancelled"
    assert {k: v["status"] for k, v in data["steps"].items()} == {
        "first": "succeeded",
        "long": "cancelled",
        "after": "skipped",
    }
    events = as_json(cli("trace", data["run_id"], "--json", cwd=tmp_path))
    started = [(e["step"], e["attempt"]) for e in events if e["type"] == "attempt_started"]
    finished = [(e["step"], e["attempt"]) for e in events if e["type"] == "attempt_finished"]
    assert started == finished
    assert events[-1]["type"] == "run_finished" and events[-1]["data"]["status"] == "cancelled"


def test_help_texts_list_every_command(tmp_path: Path) -> None:
    proc = cli("--help", cwd=tmp_path)
    for command in (
        "validate",
        "run",
        "runs",
        "show",
        "trace",
        "tools",
        "plan",
        "worker",
        "cancel",
    ):
        assert command in proc.stdout
    assert (
        "Exit code: 0 succeeded, 1 failed, 2 invalid" in cli("run", "--help", cwd=tmp_path).stdout
    )


def test_run_on_celery_workers_follows_and_detaches(tmp_path: Path, celery_cluster: Any) -> None:
    db = celery_cluster.db
    env = {"DAGWRIGHT_DB": db, "DAGWRIGHT_BROKER": celery_cluster.broker}
    example = str(REPO / "workflows/examples/retries.yaml")
    proc = cli("run", example, "--executor", "celery", "--json", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    data = as_json(proc)
    assert data["status"] == "succeeded" and data["steps"]["call_api"]["attempts"] == 3
    assert data["output"]["items"] == ["alpha", "beta", "gamma"]
    detached = cli(
        "run", example, "--executor", "celery", "--detach", "--json", cwd=tmp_path, env=env
    )
    assert detached.returncode == 0, detached.stderr
    run_id = as_json(detached)["run_id"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        shown = as_json(cli("show", run_id, "--json", cwd=tmp_path, env=env))
        if shown["status"] != "running":
            break
        time.sleep(0.2)
    assert shown["status"] == "succeeded"
    assert (
        "--detach needs --executor celery" in cli("run", example, "--detach", cwd=tmp_path).stderr
    )
