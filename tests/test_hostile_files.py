"""Hostile workflow files and data: each is refused with a located error and exit code 2 — never a
traceback, a hang or unbounded memory — and nothing runs or is recorded. The limits are settable."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from clitools import as_json, cli

from dagwright.errors import PlanError
from dagwright.executors.engine import events as ev
from dagwright.executors.local import LocalExecutor
from dagwright.executors.store import MemoryTraceStore, open_store
from dagwright.planner.limits import Limits
from dagwright.planner.loader import loads_workflow
from dagwright.planner.prepare import prepare
from dagwright.planner.schema import Workflow
from dagwright.tools import default_registry

MiB = 1 << 20

# 9 levels of 9 aliases: 402 bytes that expand to 9**9 (387,420,489) scalars.
LAUGHS = "name: lol\n" + "a0: &a0 [x, x, x, x, x, x, x, x, x]\n"
LAUGHS += "".join(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 9))
LAUGHS += "steps: []\n"

# a PNG's signature and the start of its header chunk
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00"

# case -> (file content, what stderr says, the line it names)
HOSTILE: dict[str, tuple[str | bytes, str, int]] = {
    "recursive alias": ("name: x\nsteps: []\nloop: &l [1, *l]\n", "recursive alias", 3),
    "deep sequence": (
        "name: x\nsteps: []\ndeep: " + "[" * 10_000 + "]" * 10_000 + "\n",
        "nested deeper than 64 levels",
        3,
    ),
    "deep flow mapping": (
        "name: x\nsteps: []\ndeep: " + "{a: " * 10_000 + "1" + "}" * 10_000 + "\n",
        "nested deeper than 64 levels",
        3,
    ),
    "deep block mapping": (
        "name: x\nsteps: []\ndeep:\n"  # 1,000 levels: 10,000 would be a 50 MB file
        + "".join(" " * (i + 1) + f"k{i}:\n" for i in range(1_000))
        + " " * 1_001
        + "end\n",
        "nested deeper than 64 levels",
        3 + 64,  # the 65th level (`deep` is the 2nd) opens with the key on this line
    ),
    "latin-1 text": (b"name: caf\xe9\nsteps: []\n", "not UTF-8 text", 1),
    "latin-1 on a later line": (b"name: x\nsteps: []\n# na\xefve\n", "not UTF-8 text", 3),
    "png": (PNG, "a binary file", 1),
    "nul byte": (b"name: x\nsteps: []\n\x00\n", "a binary file", 3),
    "control character": ("name: x\nsteps: []\nnote: a\x07b\n", "YAML syntax error", 3),
}


def nothing_recorded(db: Path) -> bool:
    if not db.exists():
        return True
    store = open_store(str(db))
    try:
        return store.list_runs() == []
    finally:
        store.close()


def refused(
    tmp_path: Path, path: Path, *args: str, env: dict[str, str] | None = None
) -> dict[str, str]:
    """Both commands refuse the file: exit 2, no traceback, nothing recorded. Their stderr."""
    db = tmp_path / "trace.db"
    stderr = {}
    for command in ("validate", "run"):
        db_flag = ["--db", str(db)] if command == "run" else []
        proc = cli(command, str(path), *args, *db_flag, cwd=tmp_path, env=env, timeout=60)
        assert proc.returncode == 2, (command, proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stderr, (command, proc.stderr)
        stderr[command] = proc.stderr
    assert nothing_recorded(db)
    return stderr


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_hostile_file_is_refused_at_its_line(case: str, tmp_path: Path) -> None:
    content, expected, line = HOSTILE[case]
    path = tmp_path / "wf.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    for command, stderr in refused(tmp_path, path).items():
        assert expected in stderr, (command, stderr)
        assert f"{path}:{line}:" in stderr, (command, stderr)


def test_the_billion_laughs_are_refused_at_an_alias(tmp_path: Path) -> None:
    path = tmp_path / "lol.yaml"
    path.write_text(LAUGHS)
    assert len(LAUGHS.encode()) < 500
    for command, stderr in refused(tmp_path, path).items():
        assert "YAML aliases expand" in stderr, (command, stderr)
        assert "write the values out" in stderr, (command, stderr)
        found = re.search(re.escape(str(path)) + r":(\d+):", stderr)
        assert found, (command, stderr)
        assert "*a" in LAUGHS.splitlines()[int(found.group(1)) - 1], "the line of an alias"


def test_the_billion_laughs_stay_small_in_the_loader() -> None:
    """In an interpreter that may use 1 GiB of address space in all, the loader refuses them
    with a PlanError (before the bound, it ran out of memory)."""
    code = textwrap.dedent(
        f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
        from dagwright.errors import PlanError
        from dagwright.planner.loader import loads_workflow
        try:
            loads_workflow({LAUGHS!r}, file="lol.yaml")
        except PlanError as exc:
            print("refused:", exc.issues[0].line, exc.issues[0].message)
            sys.exit(0)
        sys.exit("loaded")
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("refused:") and "YAML aliases expand" in proc.stdout


def test_a_few_aliases_still_load() -> None:
    loaded = loads_workflow(
        "name: x\n"
        "steps:\n"
        "  - {id: a, uses: echo, retry: &retry {max_attempts: 3, backoff: 0}}\n"
        "  - {id: b, uses: echo, retry: *retry}\n",
        limits=Limits(),
    )
    assert [s.retry.max_attempts for s in loaded.workflow.steps] == [3, 3]


def test_a_merge_key_is_not_a_duplicate_key() -> None:
    loaded = loads_workflow(
        "name: x\n"
        "steps:\n"
        "  - {id: a, uses: echo, with: &args {x: 1, y: 2}}\n"
        "  - id: b\n"
        "    uses: echo\n"
        "    with:\n"
        "      <<: *args\n"
        "      y: 3\n",
    )
    assert [s.with_ for s in loaded.workflow.steps] == [{"x": 1, "y": 2}, {"x": 1, "y": 3}]


def test_a_binary_program_is_refused(tmp_path: Path) -> None:
    program = Path(sys.executable).resolve()
    for command, stderr in refused(tmp_path, program).items():
        assert "a binary file" in stderr, (command, stderr)
        assert f"{program}:" in stderr, (command, stderr)


def test_a_file_over_the_default_size_is_refused_before_parsing(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    # unparseable past the limit: a refusal that parsed it would report a YAML error instead
    path.write_text("name: x\nsteps: []\n" + "#" * MiB + "\n: [\n")
    for command, stderr in refused(tmp_path, path).items():
        assert f"{path}: the workflow file is more than 1,048,576 bytes" in stderr, stderr
        assert "DAGWRIGHT_MAX_WORKFLOW_BYTES" in stderr, (command, stderr)


def test_the_file_size_limit_is_settable(tmp_path: Path) -> None:
    path = tmp_path / "wf.yaml"
    path.write_text("name: x\nsteps:\n  - {id: a, uses: echo, with: {text: hello}}\n")
    size = path.stat().st_size
    env = {"DAGWRIGHT_MAX_WORKFLOW_BYTES": str(size - 1)}
    for stderr in refused(tmp_path, path, env=env).values():
        assert f"more than {size - 1:,} bytes" in stderr
        assert f"DAGWRIGHT_MAX_WORKFLOW_BYTES (now {size - 1})" in stderr
    ok = cli("validate", str(path), cwd=tmp_path, env={"DAGWRIGHT_MAX_WORKFLOW_BYTES": str(size)})
    assert ok.returncode == 0, ok.stderr


def steps(n: int) -> str:
    return "name: x\nsteps:\n" + "".join(f"  - {{id: s{i}, uses: echo}}\n" for i in range(n))


def test_the_number_of_steps_is_limited_and_settable(tmp_path: Path) -> None:
    path = tmp_path / "wf.yaml"
    path.write_text(steps(4))
    for stderr in refused(tmp_path, path, env={"DAGWRIGHT_MAX_STEPS": "3"}).values():
        assert (
            f"{path}:2, field 'steps': the workflow has 4 steps, more than the limit of 3" in stderr
        )
        assert "DAGWRIGHT_MAX_STEPS (now 3)" in stderr
    path.write_text(steps(3))
    ok = cli("validate", str(path), cwd=tmp_path, env={"DAGWRIGHT_MAX_STEPS": "3"})
    assert ok.returncode == 0, ok.stderr


def test_the_default_step_limit_can_be_raised() -> None:
    text = steps(10_001)
    with pytest.raises(PlanError, match="10,001 steps, more than the limit of 10,000"):
        loads_workflow(text, limits=Limits(workflow_bytes=10 * MiB))
    loaded = loads_workflow(text, limits=Limits(workflow_bytes=10 * MiB, steps=50_000))
    assert len(loaded.workflow.steps) == 10_001


def test_the_nesting_depth_is_settable(tmp_path: Path) -> None:
    path = tmp_path / "wf.yaml"
    path.write_text("name: x\nsteps:\n  - id: a\n    uses: echo\n    with: {x: {y: [1]}}\n")
    # the root mapping, steps, the step, `with`, x, y: 6 levels
    for stderr in refused(tmp_path, path, env={"DAGWRIGHT_MAX_DEPTH": "5"}).values():
        assert f"{path}:5: nested deeper than 5 levels" in stderr
        assert "DAGWRIGHT_MAX_DEPTH (now 5)" in stderr
    ok = cli("validate", str(path), cwd=tmp_path, env={"DAGWRIGHT_MAX_DEPTH": "6"})
    assert ok.returncode == 0, ok.stderr


INPUTS = "name: x\ninputs:\n  text: {type: string}\n  data: {type: array, default: []}\n"
INPUTS += "steps:\n  - {id: a, uses: echo, with: {t: '${{ inputs.text }}'}}\n"


def test_an_input_over_the_limit_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "wf.yaml"
    path.write_text(INPUTS)
    env = {"DAGWRIGHT_MAX_INPUT_BYTES": "10"}
    for stderr in refused(tmp_path, path, "--input", "text=" + "é" * 6, env=env).values():
        assert f"{path}:3, field 'inputs.text': input 'text' is 12 bytes" in stderr, stderr
        assert "more than the limit of 10" in stderr and "DAGWRIGHT_MAX_INPUT_BYTES (now 10)" in (
            stderr
        )
    ok = cli("validate", str(path), "--input", "text=" + "é" * 5, cwd=tmp_path, env=env)
    assert ok.returncode == 0, ok.stderr


def test_a_50_mb_input_is_refused_at_once(tmp_path: Path) -> None:
    """A command line cannot carry it (an argument is at most 128 KiB): the library's own
    entry point refuses it by the default limit, before checking or converting it."""
    path = tmp_path / "wf.yaml"
    path.write_text(INPUTS)
    with pytest.raises(PlanError) as info:
        prepare(path, default_registry, inputs={"text": "x" * (50 * MiB)}, inputs_as_text=True)
    [issue] = info.value.issues
    assert issue.message == "input 'text' is 52,428,800 bytes, more than the limit of 1,048,576"
    assert issue.line == 3 and "DAGWRIGHT_MAX_INPUT_BYTES" in (issue.hint or "")


def test_a_deeply_nested_input_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "wf.yaml"
    path.write_text(INPUTS)
    deep = "[" * 10_000 + "]" * 10_000
    for stderr in refused(tmp_path, path, "-i", "text=t", "-i", f"data={deep}").values():
        assert "input 'data' is nested deeper than 64 levels" in stderr, stderr
        assert "DAGWRIGHT_MAX_DEPTH" in stderr
    ok = cli("validate", str(path), "-i", "text=t", "-i", 'data=[[["]]]]]"]]]', cwd=tmp_path)
    assert ok.returncode == 0, "brackets inside strings are not nesting: " + ok.stderr


def test_data_nested_deeper_than_the_limit_is_refused_as_an_input(tmp_path: Path) -> None:
    path = tmp_path / "wf.yaml"
    path.write_text(INPUTS)
    deep: list[Any] = []
    for _ in range(100):
        deep = [deep]
    with pytest.raises(PlanError, match="input 'data' is nested deeper than 64 levels"):
        prepare(path, default_registry, inputs={"text": "t", "data": deep})


# -- a step's output ---------------------------------------------------------------------------


def big_output_registry(size: int) -> Any:
    registry = default_registry.copy()

    @registry.tool("test.big")
    def big() -> str:
        return "x" * size

    return registry


def test_an_output_over_the_limit_fails_the_attempt_without_retrying() -> None:
    store = MemoryTraceStore()
    wf = Workflow.model_validate(
        {
            "name": "big",
            "steps": [{"id": "huge", "uses": "test.big", "retry": {"max_attempts": 3}}],
        }
    )
    executor = LocalExecutor(
        store, big_output_registry(2000), limits=Limits(output_bytes=1000), max_parallel=1
    )
    result = executor.run(wf)
    assert result.status == "failed"
    step = result.state.steps["huge"]
    assert step.status == "failed" and len(step.attempts) == 1, "not retried"
    finished = [e for e in store.events(result.run_id) if e.type == ev.ATTEMPT_FINISHED]
    [attempt] = finished
    error = attempt.data["error"]
    assert error["type"] == "OutputTooLarge" and error["retryable"] is False
    assert error["message"].startswith(
        "step 'huge': the output of tool 'test.big' is 2,002 bytes of JSON, "
        "more than the limit of 1,000"
    )
    assert "DAGWRIGHT_MAX_OUTPUT_BYTES" in error["message"]
    assert attempt.data.get("output") is None, "the output is not recorded"
    assert "x" * 1000 not in json.dumps([e.data for e in store.events(result.run_id)])


def test_an_output_within_the_limit_is_recorded() -> None:
    store = MemoryTraceStore()
    wf = Workflow.model_validate({"name": "big", "steps": [{"id": "ok", "uses": "test.big"}]})
    executor = LocalExecutor(store, big_output_registry(998), limits=Limits(output_bytes=1000))
    result = executor.run(wf)
    assert result.status == "succeeded" and result.output == {"ok": "x" * 998}


def test_the_output_limit_is_settable_on_the_command_line(tmp_path: Path) -> None:
    path = tmp_path / "wf.yaml"
    path.write_text(INPUTS)
    db = tmp_path / "trace.db"
    proc = cli(
        "run", str(path), "--json", "--db", str(db), "-i", "text=" + "y" * 3000,
        cwd=tmp_path, env={"DAGWRIGHT_MAX_OUTPUT_BYTES": "2000"}, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    summary = as_json(proc)
    assert summary["status"] == "failed"
    message = json.dumps(summary)
    assert "the output of tool 'echo' is 3,008 bytes of JSON, more than the limit of 2,000" in (
        message
    )


def test_an_output_over_the_limit_fails_a_celery_workers_attempt_without_retrying() -> None:
    from dagwright.executors.distributed.engine import Engine

    store = MemoryTraceStore()
    wf = Workflow.model_validate(
        {"name": "big", "steps": [{"id": "huge", "uses": "test.big", "retry": {"max_attempts": 3}}]}
    )
    worker = Engine(store, big_output_registry(2000), limits=Limits(output_bytes=1000))
    run_id, [dispatch] = worker.start(wf, {})
    assert worker.execute(dispatch) == [], "nothing sent again"
    events = store.events(run_id)
    [attempt] = [e for e in events if e.type == ev.ATTEMPT_FINISHED]
    assert attempt.data["error"]["type"] == "OutputTooLarge"
    assert attempt.data.get("output") is None
    assert events[-1].type == ev.RUN_FINISHED and events[-1].data["status"] == "failed"


def test_the_settings_become_the_limits_workers_use(tmp_path: Path) -> None:
    from dagwright.executors.celery.app import create_app, runtime
    from dagwright.settings import Settings

    settings = Settings.from_env(
        {
            "DAGWRIGHT_DB": str(tmp_path / "t.db"),
            "DAGWRIGHT_MAX_WORKFLOW_BYTES": "1",
            "DAGWRIGHT_MAX_STEPS": "2",
            "DAGWRIGHT_MAX_DEPTH": "3",
            "DAGWRIGHT_MAX_INPUT_BYTES": "4",
            "DAGWRIGHT_MAX_OUTPUT_BYTES": "5",
        }
    )
    assert settings.limits() == Limits(
        workflow_bytes=1, steps=2, depth=3, input_bytes=4, output_bytes=5
    )
    assert Settings().limits() == Limits(), "the settings' defaults are the limits' defaults"
    engine = runtime(create_app(settings)).engine()
    try:
        assert engine.limits.output_bytes == 5
    finally:
        engine.store.close()
