"""Code is loaded only from where the user put it: a workflow's `tools:` names a module in the
workflow's own folder (its real path inside it) or one the settings allow (`DAGWRIGHT_TOOLS`).
Anything else is a located problem, and nothing is imported: each hostile module here writes a
marker file when imported, and the tests assert that the file does not exist."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from clitools import REPO, as_json, cli

from dagwright.errors import PlanError
from dagwright.executors.lifecycle import run_registry
from dagwright.planner.loader import loads_workflow
from dagwright.planner.prepare import prepare
from dagwright.planner.schema import Workflow
from dagwright.planner.tool_modules import registry_for
from dagwright.tools import ToolRegistry

TOOL = (
    "from dagwright import tool\n\n\n@tool(\"own.word\")\ndef word() -> str:\n    return 'mine'\n"
)


def evil(path: Path, marker: Path) -> Path:
    """A module that leaves ``marker`` behind when it is imported."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n")
    return path


def workflow(folder: Path, entry: str) -> Path:
    """A workflow whose `tools:` (line 2) names ``entry``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "wf.yaml"
    path.write_text(f"name: hostile\ntools: [{entry!r}]\nsteps:\n  - {{id: s, uses: echo}}\n")
    return path


def refused_everywhere(wf: Path, marker: Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    """`validate` and `run` both refuse with exit 2, a location, and nothing imported or run."""
    messages = []
    for command in (("validate", str(wf)), ("run", str(wf))):
        proc = cli(*command, cwd=cwd, env=env)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert f"{wf}:2" in proc.stderr and "tools" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
        assert not marker.exists(), f"{command[0]} imported the module"
        messages.append(proc.stderr)
    data = as_json(cli("validate", str(wf), "--json", cwd=cwd, env=env))
    assert data["valid"] is False
    (issue,) = data["errors"]
    assert (issue["file"], issue["line"], issue["field"]) == (str(wf), 2, "tools")
    assert issue["hint"]
    assert not marker.exists()
    assert not (cwd / ".dagwright").exists(), "a refused workflow records nothing"
    return messages[0]


def test_an_absolute_path_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    target = evil(tmp_path / "elsewhere" / "evil.py", marker)
    wf = workflow(tmp_path / "work", str(target.with_suffix("")))
    message = refused_everywhere(wf, marker, tmp_path)
    assert "not a module name" in message


@pytest.mark.parametrize("entry", ["../elsewhere/evil", "../../elsewhere/evil", "..elsewhere.evil"])
def test_a_path_out_of_the_folder_is_refused(tmp_path: Path, entry: str) -> None:
    marker = tmp_path / "marker"
    evil(tmp_path / "elsewhere" / "evil.py", marker)
    evil(tmp_path / "work" / "elsewhere" / "evil.py", marker)  # where `..elsewhere` might land
    wf = workflow(tmp_path / "work" / "sub", entry)
    assert "not a module name" in refused_everywhere(wf, marker, tmp_path)


def test_a_symlink_out_of_the_folder_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    outside = evil(tmp_path / "elsewhere" / "evil.py", marker)
    folder = tmp_path / "work"
    folder.mkdir()
    (folder / "evil.py").symlink_to(outside)
    (folder / "pkg").symlink_to(outside.parent, target_is_directory=True)
    for entry in ("evil", "pkg.evil"):
        wf = workflow(folder, entry)
        assert "leaves the workflow's folder" in refused_everywhere(wf, marker, tmp_path)


def test_an_importable_module_the_settings_do_not_allow_is_refused(tmp_path: Path) -> None:
    """On PYTHONPATH (importable), but not in DAGWRIGHT_TOOLS: not imported."""
    marker = tmp_path / "marker"
    site = tmp_path / "site"
    evil(site / "evilpkg" / "__init__.py", marker)
    evil(site / "evilpkg" / "payload.py", marker)
    wf = workflow(tmp_path / "work", "evilpkg.payload")
    env = {"PYTHONPATH": str(site)}
    message = refused_everywhere(wf, marker, tmp_path, env)
    assert "DAGWRIGHT_TOOLS" in message


def test_a_module_the_settings_allow_and_the_folder_s_own_modules_load(tmp_path: Path) -> None:
    site = tmp_path / "site"
    (site / "goodpkg").mkdir(parents=True)
    (site / "goodpkg" / "__init__.py").write_text("")
    (site / "goodpkg" / "tools.py").write_text(TOOL.replace("own.word", "good.word"))
    folder = tmp_path / "work"
    (folder / "mine").mkdir(parents=True)
    (folder / "mine" / "__init__.py").write_text("")
    (folder / "mine" / "more.py").write_text(TOOL)
    wf = folder / "wf.yaml"
    wf.write_text(
        "name: fine\ntools: [goodpkg.tools, mine.more]\n"
        "steps:\n  - {id: a, uses: good.word}\n  - {id: b, uses: own.word}\n"
    )
    env = {"PYTHONPATH": str(site), "DAGWRIGHT_TOOLS": "goodpkg.tools"}
    proc = cli("run", str(wf), "--json", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert as_json(proc)["output"] == {"a": "mine", "b": "mine"}


def test_the_repository_s_examples_still_validate(tmp_path: Path) -> None:
    proc = cli("validate", str(REPO / "workflows/examples/quickstart.yaml"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr


def test_an_inline_workflow_may_not_name_tool_modules(
    tmp_path: Path, registry: ToolRegistry
) -> None:
    """A workflow given as text (the API) has no folder: registered tools only."""
    marker = tmp_path / "marker"
    evil(tmp_path / "evil.py", marker)
    text = (
        f"name: inline\ntools: [evil, {str(tmp_path / 'evil')!r}]\nsteps: [{{id: s, uses: echo}}]\n"
    )
    loaded = loads_workflow(text, file="<api>")
    assert loaded.base_dir is None
    _, issues = registry_for(loaded.workflow, registry, loaded.base_dir, loaded.source)
    assert [(i.file, i.line, i.field) for i in issues] == [("<api>", 2, "tools")] * 2
    assert "registered tools only" in issues[0].message
    # a file prepared as if it were inline (the API's flag): refused too, though evil.py is there
    wf = workflow(tmp_path, "evil")
    with pytest.raises(PlanError) as info:
        prepare(wf, registry, allow_tool_modules=False)
    assert [(i.line, i.field) for i in info.value.issues] == [(2, "tools")]
    assert not marker.exists()


def test_a_recorded_run_that_breaks_the_rules_is_refused_on_workers(
    tmp_path: Path, registry: ToolRegistry
) -> None:
    """Workers load a run's tools through `run_registry`: the same rules, a clear error."""
    marker = tmp_path / "marker"
    outside = evil(tmp_path / "elsewhere" / "evil.py", marker)
    folder = tmp_path / "work"
    folder.mkdir()
    (folder / "linked.py").symlink_to(outside)
    source = str(folder / "wf.yaml")
    for entry, why in [
        (str(outside.with_suffix("")), "not a module name"),
        ("linked", "leaves the workflow's folder"),
        ("os.path", "DAGWRIGHT_TOOLS"),
    ]:
        wf = Workflow.model_validate(
            {"name": "x", "tools": [entry], "steps": [{"id": "s", "uses": "echo"}]}
        )
        with pytest.raises(PlanError) as info:
            run_registry(wf, registry, (), source)
        assert why in str(info.value)
        with pytest.raises(PlanError, match="registered tools only"):
            run_registry(wf, registry, (), None)  # a run without a file (inline)
    assert not marker.exists()


# -- resume, fork and replay apply the settings' limits ---------------------------------------------

FAILING = """\
name: limited
inputs:
  note: {type: string, default: ""}
steps:
  - id: a
    uses: echo
    with: {text: "${{ inputs.note }}"}
  - id: b
    uses: flaky
    with: {fail_times: 1}
    needs: [a]
"""
EDITED = FAILING.replace("fail_times: 1", "fail_times: 0") + (
    "  - id: c\n    uses: echo\n    with: {x: 1}\n    needs: [b]\n"
)


def failed_run(tmp_path: Path) -> str:
    (tmp_path / "wf.yaml").write_text(FAILING)
    proc = cli("run", "wf.yaml", "--json", cwd=tmp_path)
    data = as_json(proc)
    assert proc.returncode == 1 and data["status"] == "failed", proc.stderr
    return str(data["run_id"])


def test_resume_loads_the_workflow_file_under_the_settings_limits(tmp_path: Path) -> None:
    run_id = failed_run(tmp_path)
    (tmp_path / "edited.yaml").write_text(EDITED)  # 3 steps
    args = ["resume", run_id, "--workflow", "edited.yaml"]
    proc = cli(*args, cwd=tmp_path, env={"DAGWRIGHT_MAX_STEPS": "2"})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert "edited.yaml:4, field 'steps': the workflow has 3 steps, more than the limit of 2" in (
        " ".join(proc.stderr.split())
    )
    assert "raise DAGWRIGHT_MAX_STEPS (now 2)" in proc.stderr
    proc = cli(*args, cwd=tmp_path, env={"DAGWRIGHT_MAX_WORKFLOW_BYTES": "100"})
    assert proc.returncode == 2 and "is more than 100 bytes" in proc.stderr, proc.stderr
    assert len(as_json(cli("runs", "--json", cwd=tmp_path))) == 1, "nothing was run"
    done = cli(*args, "--json", cwd=tmp_path)  # within the default limits: it runs
    assert done.returncode == 0 and as_json(done)["status"] == "succeeded", done.stderr


@pytest.mark.parametrize(
    ("verb", "given", "message"),
    [
        (["resume"], ["--input", "note=" + "x" * 11], "input 'note' is 11 bytes, more than"),
        (["fork", "--from", "a"], ["--set", "inputs.note=" + "x" * 11], "--set 'inputs.note' is"),
        (["fork"], ["--set", "steps.a.with.text=" + "[" * 5000], "is nested deeper than 64"),
    ],
)
def test_values_given_to_resume_and_fork_are_bounded_by_the_settings(
    tmp_path: Path, verb: list[str], given: list[str], message: str
) -> None:
    run_id = failed_run(tmp_path)
    env = {"DAGWRIGHT_MAX_INPUT_BYTES": "10"}
    proc = cli(verb[0], run_id, *verb[1:], *given, cwd=tmp_path, env=env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in " ".join(proc.stderr.split())
    assert "Traceback" not in proc.stderr
    assert len(as_json(cli("runs", "--json", cwd=tmp_path))) == 1, "nothing was run"


def test_replay_runs_tools_again_under_the_settings_output_limit(tmp_path: Path) -> None:
    """`echo` runs again in a replay: its output is bounded by DAGWRIGHT_MAX_OUTPUT_BYTES."""
    (tmp_path / "wf.yaml").write_text(
        "name: big\nsteps:\n  - id: a\n    uses: echo\n    with: {text: " + "x" * 2000 + "}\n"
    )
    run_id = as_json(cli("run", "wf.yaml", "--json", cwd=tmp_path))["run_id"]
    same = as_json(cli("replay", run_id, "--json", "--no-record", cwd=tmp_path))
    assert same["reproduced"] is True
    proc = cli("replay", run_id, "--json", "--no-record", cwd=tmp_path,
               env={"DAGWRIGHT_MAX_OUTPUT_BYTES": "1000"})  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    [first] = as_json(proc)["divergences"]
    assert first["what"] == "status" and first["step"] == "a"
    assert first["actual"]["error"]["type"] == "OutputTooLarge", first


# -- Celery workers that refuse a run's tools fail the run --------------------------------------------


@pytest.mark.parametrize("case", ["module-gone", "not-allowed-here", "dispatch-lost"])
def test_a_run_whose_tools_the_workers_refuse_is_recorded_as_failed(
    tmp_path: Path, celery_cluster: Any, registry: ToolRegistry, case: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """The client could load the run's tools, its workers cannot: the module was removed from
    the workflow's folder after the run was submitted, or the client's DAGWRIGHT_TOOLS allows a
    module the workers' does not; or the module is gone and the dispatch was lost too (the
    workers' sweeper finds the run). The run fails once, naming the module and why; nothing
    runs."""
    from conftest import use_broker

    from dagwright.executors.distributed.engine import Engine
    from dagwright.executors.engine import events as ev
    from dagwright.executors.lifecycle import follow
    from dagwright.executors.store.sql import SqlTraceStore

    folder = tmp_path / "work"
    folder.mkdir()
    if case in ("module-gone", "dispatch-lost"):
        module, why, allowed = "own_tools", f"no own_tools.py in {folder}", ()
        (folder / "own_tools.py").write_text(TOOL)
    else:
        module, why, allowed = "client_tools", "not a module the settings allow", ("client_tools",)
        (tmp_path / "client_tools.py").write_text(TOOL.replace("own.word", "client.word"))
        monkeypatch.syspath_prepend(str(tmp_path))
    tool = "client.word" if case == "not-allowed-here" else "own.word"
    wf = Workflow.model_validate({"name": "refused", "tools": [module], "steps": [
        {"id": "a", "uses": tool}, {"id": "b", "uses": "echo", "needs": ["a"]},
    ]})  # fmt: skip
    store = SqlTraceStore(celery_cluster.db)
    try:
        client = Engine(store, registry, tool_modules=allowed)
        run_id, dispatches = client.start(wf, {}, source=str(folder / "wf.yaml"))
        (folder / "own_tools.py").unlink(missing_ok=True)
        if case != "dispatch-lost":
            use_broker(celery_cluster.broker).send(dispatches)
        state = follow(store, run_id, poll=0.05, timeout=30)
        events = store.events(run_id)
    finally:
        store.close()
    assert state.status == "failed"
    [finished] = [e for e in events if e.type == ev.RUN_FINISHED]
    error = finished.data["error"]
    assert error["type"] == "ToolsRefused"
    assert error["message"].startswith("a worker cannot load this run's tools: ")
    assert f"cannot load tool module {module!r}" in error["message"] and why in error["message"]
    assert [state.steps[s].status for s in "ab"] == ["cancelled", "skipped"]
    assert not [e for e in events if e.type == ev.ATTEMPT_STARTED], "nothing ran"
