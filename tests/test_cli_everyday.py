"""What the command line tells a user in everyday use (issue 15): a run that succeeded with a
failed optional step, its output as text or JSON or a file, a running run, what to do next,
plurals and durations, replays left out of `runs`, one JSON vocabulary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from dagwright.cli.common import _plural, _secs
from dagwright.cli.ending import Output, next_steps, status_words
from dagwright.cli.main import app
from dagwright.executors.engine import events as ev
from dagwright.executors.engine.events import Event
from dagwright.executors.lifecycle import NewRun, open_run
from dagwright.executors.store.sql import SqlTraceStore
from dagwright.planner.schema import Workflow

REPORT = """\
name: sales-report
steps:
  - id: load
    uses: echo
    with: {rows: 2}
  - id: notify
    uses: flaky
    with: {fail_times: 5, message: "SMTP 421 try again later"}
    on_failure: continue
  - id: report
    uses: echo
    with: {text: "# Sales\\n\\nNorth: 3\\n"}
output: ${{ steps.report.output.text }}
"""


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for key in [k for k in __import__("os").environ if k.startswith("DAGWRIGHT_")]:
        monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "report.yaml").write_text(REPORT)
    return tmp_path


def invoke(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def test_a_run_that_succeeded_with_a_failed_optional_step_says_so(here: Path) -> None:
    result = invoke("run", "report.yaml")
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert "  succeeded with 1 failed optional step (notify)  in " in text
    assert "failed optional step notify: SMTP 421 try again later (attempt 1 of the first 5" in text
    data = json.loads(invoke("run", "report.yaml", "--json").stdout)
    assert data["status"] == "succeeded"
    assert data["failed_optional"] == [{"step": "notify", "type": "StepError",
        "message": "SMTP 421 try again later (attempt 1 of the first 5 that fail)"}]  # fmt: skip
    shown = invoke("show", data["run_id"]).stdout
    assert "  succeeded with 1 failed optional step (notify)  " in shown.splitlines()[0]


def test_the_output_as_text_as_json_or_in_a_file(here: Path) -> None:
    # piped, a string output is JSON by default (a script reads it); --output raw: the text
    piped = invoke("run", "report.yaml").stdout
    assert 'output:\n"# Sales\\n\\nNorth: 3\\n"\n' in piped
    raw = invoke("run", "report.yaml", "--output", "raw").stdout
    assert "output:\n# Sales\n\nNorth: 3\n" in raw
    # -o writes it as text (JSON for anything but a string), and says where
    written = invoke("run", "report.yaml", "-o", "report.md")
    assert written.exit_code == 0
    assert "output: written to report.md (18 bytes, text)" in written.stdout
    assert (here / "report.md").read_text() == "# Sales\n\nNorth: 3\n"
    as_json = invoke("run", "report.yaml", "--output", "json", "-o", "report.json").stdout
    assert "output: written to report.json (24 bytes, JSON)" in as_json
    assert json.loads((here / "report.json").read_text()) == "# Sales\n\nNorth: 3\n"
    # on a terminal, auto prints a string as text
    assert Output("auto").text("# Sales", terminal=True) == ("# Sales", False)
    assert Output("auto").text("# Sales", terminal=False) == ('"# Sales"', True)
    assert Output("raw").text({"a": 1}, terminal=True) == ('{\n  "a": 1\n}', True)
    refused = invoke("run", "report.yaml", "--output", "yaml")
    assert refused.exit_code == 2 and "--output 'yaml': use auto, raw or json" in refused.stderr
    # show prints (or writes) a past run's output the same way
    run_id = json.loads(invoke("run", "report.yaml", "--json").stdout)["run_id"]
    invoke("show", run_id, "-o", "again.md")
    assert (here / "again.md").read_text() == "# Sales\n\nNorth: 3\n"


def test_show_of_a_running_run_shows_its_running_attempt_and_how_long(here: Path) -> None:
    db = str(here / "t.db")
    store = SqlTraceStore(db)
    wf = Workflow.model_validate(
        {"name": "slow", "steps": [{"id": "a", "uses": "sleep", "with": {"ms": 60000}},
                                   {"id": "b", "uses": "echo", "needs": ["a"]}]}
    )  # fmt: skip
    t0 = 1_800_000_000.0
    open_run(store, NewRun(wf, {}, "r" * 32), executor="celery", clock=lambda: t0)
    store.append("r" * 32, [
        Event(ev.STEP_SCHEDULED, "r" * 32, t0, "a", 1, {"attempt_id": "x"}),
        Event(ev.ATTEMPT_STARTED, "r" * 32, t0 + 1, "a", 1, {"attempt_id": "x", "inputs": {}}),
    ])  # fmt: skip
    store.close()
    text = invoke("show", "rrrr", "--db", db).stdout
    row = next(line for line in text.splitlines() if line.startswith(" a "))
    assert " running " in row and "running " in row.split("running", 1)[1]
    assert "attempt 1 running after" not in text and "after :" not in text


def test_what_to_do_next_fits_how_the_run_ended() -> None:
    base = {"run_id": "r1", "lineage": None}
    failed = next_steps(base | {"status": "failed"}, None, "/nowhere/wf.yaml")
    assert failed[:2] == ["inspect: dagwright show r1", "replay: dagwright replay r1"]
    assert (
        failed[2]
        == "fix /nowhere/wf.yaml, then go on: dagwright resume r1 --workflow /nowhere/wf.yaml"
    )
    assert failed[3] == "or, once what it called works again: dagwright resume r1"
    planned = next_steps(base | {"status": "failed"}, "t.db", None)
    assert planned[2] == ("fix its plan: dagwright show r1 --workflow --db t.db > plan.yaml, "
                          "edit it, then go on: dagwright resume r1 --workflow plan.yaml --db t.db")  # fmt: skip
    for status in ("cancelled", "abandoned"):
        ended = next_steps(base | {"status": status}, None, "wf.yaml")
        assert ended[2:] == ["go on where it stopped: dagwright resume r1"]
        assert not any("--workflow" in line for line in ended)
    assert next_steps(base | {"status": "succeeded"}, None, "wf.yaml")[2:] == []
    forked = next_steps(base | {"status": "failed", "lineage": {"mode": "fork"}}, None, "wf.yaml")
    assert "show r1 --workflow" in forked[2], "a fork's plan is not its parent's file"


def test_plurals_and_durations_read_as_people_write_them(here: Path) -> None:
    assert [_plural(n, "step") for n in (0, 1, 2)] == ["0 steps", "1 step", "2 steps"]
    assert [_secs(s) for s in (0.0004, 0.0137, 0.38147, 0.2, 2.124, 12.5, 125, 3725)] == [
        "0ms", "14ms", "0.38s", "0.2s", "2.12s", "12.5s", "2m05s", "1h02m"
    ]  # fmt: skip
    two = {"status": "succeeded", "failed_optional": [{"step": "a"}, {"step": "b"}]}
    assert status_words(two) == "succeeded with 2 failed optional steps (a, b)"
    (here / "one.yaml").write_text("name: one\nsteps:\n  - id: a\n    uses: echo\n")
    assert ": one, 1 step\n" in invoke("run", "one.yaml").stdout
    (here / "flaky.yaml").write_text(
        "name: flaky\nsteps:\n  - id: a\n    uses: flaky\n    with: {fail_times: 1}\n"
        "    retry: {max_attempts: 2, backoff: 0.01, jitter: 0.5}\n"
    )
    text = invoke("run", "flaky.yaml").stdout
    wait = text.split("(retry in ")[1].split(")")[0]
    assert wait.endswith("ms") and wait[:-2].isdigit(), f"a rounded delay: {wait}"
    assert "✓ a  2 attempts, " in text


def test_runs_leaves_replays_out_unless_all(here: Path) -> None:
    failing = here / "failing.yaml"
    failing.write_text(
        "name: failing\nsteps:\n  - id: a\n    uses: flaky\n    with: {fail_times: 1}\n"
    )
    run_id = json.loads(invoke("run", str(failing), "--json").stdout)["run_id"]
    replayed = json.loads(invoke("replay", run_id, "--json").stdout)["run_id"]
    listed = invoke("runs", "--status", "failed")
    assert run_id in listed.stdout and replayed not in listed.stdout
    assert "1 replay hidden: --all shows them" in listed.stdout
    everything = invoke("runs", "--status", "failed", "--all").stdout
    assert replayed in everything and f"replay of {run_id[:12]}" in everything
    as_json = json.loads(invoke("runs", "--json", "--all").stdout)
    assert {r["run_id"] for r in as_json} == {run_id, replayed}
    assert [r["lineage"]["mode"] for r in as_json if r["run_id"] == replayed] == ["replay"]


def test_every_json_output_speaks_one_vocabulary(here: Path) -> None:
    run = json.loads(invoke("run", "report.yaml", "--json").stdout)
    shown = json.loads(invoke("show", run["run_id"], "--json").stdout)
    listed = json.loads(invoke("runs", "--json").stdout)[0]
    times = {"started_at", "finished_at", "duration"}
    for doc in (run, shown, listed):
        assert set(doc) >= {"run_id", "workflow", "status", "lineage", *times}
        assert "created_at" not in doc
        assert doc["started_at"].endswith("+00:00") and isinstance(doc["duration"], float)
    assert listed["started_at"] == run["started_at"] and listed["finished_at"] == run["finished_at"]
    events = json.loads(invoke("trace", run["run_id"], "--json").stdout)
    assert all(isinstance(e["at"], str) and e["at"].endswith("+00:00") for e in events)
