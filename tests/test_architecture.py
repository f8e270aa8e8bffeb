"""The shape of the package: a pure core, and a small pinned public surface."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import dagwright
import dagwright.executors
import dagwright.planner
import dagwright.tools

REPO = Path(__file__).resolve().parent.parent

CORE = [
    # the plan: model, references, validation (docs/architecture.md draws the same list)
    "dagwright.planner.schema",
    "dagwright.planner.source",
    "dagwright.planner.references",
    "dagwright.planner.expressions",
    "dagwright.planner.sandbox",
    "dagwright.planner.plan",
    "dagwright.planner.validate",
    "dagwright.planner.validate_args",
    "dagwright.planner.validate_verify",
    "dagwright.planner.validate_graph",
    "dagwright.planner.inputs",
    "dagwright.planner.output_paths",
    "dagwright.planner.regex",
    "dagwright.planner.sandbox_limits",
    "dagwright.tools.registry",
    "dagwright.tools.definition",
    "dagwright.tools.user_modules",
    # the pure engine
    "dagwright.executors.engine",
    "dagwright.executors.engine.events",
    "dagwright.executors.engine.outcome",
    "dagwright.executors.engine.state",
    "dagwright.executors.engine.decisions",
    "dagwright.executors.engine.retry",
    "dagwright.executors.engine.verify",
    "dagwright.executors.engine.lineage",
]
FORBIDDEN_IN_CORE = [
    # I/O, providers
    "celery", "kombu", "redis", "sqlalchemy", "psycopg", "sqlite3", "httpx", "requests",
    "instructor", "openai", "anthropic", "outlines", "transformers", "torch", "yaml",
    # runtimes: an event loop, thread pools, processes
    "asyncio", "concurrent.futures", "subprocess",
    # the command line
    "typer", "click", "rich",
    # dagwright's own edges: drivers, stores, providers, CLI, settings
    "dagwright.agents", "dagwright.cli", "dagwright.settings", "dagwright.worker",
    "dagwright.executors.local", "dagwright.executors.runner", "dagwright.executors.lifecycle",
    "dagwright.executors.replay", "dagwright.executors.celery", "dagwright.executors.store",
    "dagwright.tools.builtin", "dagwright.tools.llm",
]  # fmt: skip


def _loaded_by(module: str) -> list[str]:
    """What importing ``module`` in a fresh interpreter loads, of the forbidden names."""
    code = (
        "import sys, json\n"
        f"import {module}\n"
        f"bad = {FORBIDDEN_IN_CORE!r}\n"
        "print(json.dumps(sorted({b for b in bad for n in sys.modules "
        "if n == b or n.startswith(b + '.')})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.parametrize("module", CORE)
def test_each_core_module_alone_imports_no_io_runtime_or_cli(module: str) -> None:
    """Each core module, imported alone in a fresh interpreter (so that lazy imports and
    package ``__init__`` files count), loads no I/O library, runtime, CLI or driver."""
    assert _loaded_by(module) == []


def _calls(pattern: str) -> list[str]:
    """The package's modules (not tests or benchmarks) whose code contains ``pattern``."""
    found = []
    for path in sorted(REPO.rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        if rel.startswith(("tests/", "bench/", ".venv/")) or "/." in rel:
            continue
        if pattern in path.read_text(encoding="utf-8"):
            found.append(rel)
    return found


def test_each_step_of_a_run_s_life_exists_once() -> None:
    """Drivers (local, Celery, replay, CLI, API) call the lifecycle; none copies it."""
    assert _calls(".create_run(") == [
        "executors/lifecycle/start.py",
        "executors/store/redacting.py",  # the redacting store wrapper delegates, creates none
    ]
    assert _calls("registry_for_run(") == [
        "executors/lifecycle/start.py",
        "planner/tool_modules.py",
    ]
    assert _calls("load_tool_modules(") == [
        "executors/wiring.py",  # DAGWRIGHT_TOOLS for every driver
        "planner/prepare.py",
        "planner/tool_modules.py",
    ]
    assert _calls("ToolContext(") == [
        "executors/celery/app.py",  # the worker's warm-up attempt
        "executors/lifecycle/context.py",
    ]
    assert _calls("Event(ev.RUN_STARTED") == ["executors/lifecycle/start.py"]
    assert _calls("Event(ev.PLAN_REVISED") == ["executors/engine/decisions.py"]
    assert _calls("getrandbits(") == ["executors/lifecycle/start.py"]
    assert _calls("uuid.uuid4") == []


def test_public_names_are_pinned() -> None:
    assert sorted(dagwright.__all__) == sorted(
        [
            "DagwrightError",
            "PlanError",
            "PlanIssue",
            "ReplayMismatch",
            "RunNotFound",
            "StepError",
            "StepTimeout",
            "StoreError",
            "ToolNotFound",
            "VerificationFailed",
            "Check",
            "InputSpec",
            "RetryPolicy",
            "Step",
            "Workflow",
            "Tool",
            "ToolContext",
            "ToolRegistry",
            "default_registry",
            "tool",
            "__version__",
        ]
    )
    assert sorted(dagwright.executors.__all__) == [
        "Event",
        "LocalExecutor",
        "RunResult",
        "RunState",
        "fold",
        "ready_steps",
    ]
    assert sorted(dagwright.planner.__all__) == [
        "Check",
        "InputSpec",
        "Plan",
        "RetryPolicy",
        "Source",
        "Step",
        "Workflow",
        "check",
        "resolve_inputs",
        "validate",
    ]
    for module in (dagwright, dagwright.executors, dagwright.planner, dagwright.tools):
        for name in module.__all__:
            assert hasattr(module, name), f"{module.__name__}.{name}"


RUNTIMES = ["celery", "instructor", "kombu", "openai", "redis"]
CLI_START = """\
import json, sys
sys.argv = {argv!r}
from dagwright.cli.main import main
try:
    main()
except SystemExit:
    pass
print(json.dumps(sorted({{n.split(".")[0] for n in sys.modules}})), file=sys.stderr)
"""


@pytest.mark.parametrize(
    ("argv", "not_loaded"),
    [
        (["--help"], [*RUNTIMES, "jsonschema", "networkx", "sqlalchemy"]),
        (["validate", "workflows/examples/quickstart.yaml"], [*RUNTIMES, "sqlalchemy"]),
        (["run", "{tmp}/one.yaml", "--db", "{tmp}/trace.db"], RUNTIMES),
    ],
)
def test_the_command_line_loads_only_what_the_command_uses(
    argv: list[str], not_loaded: list[str], tmp_path: Path
) -> None:
    """Commands import executors, stores, the planner and model clients when they run: `--help`
    loads none of them; `validate` and a local run no Celery, Redis or model client."""
    (tmp_path / "one.yaml").write_text("name: one\nsteps: [{id: a, uses: echo, with: {x: 1}}]\n")
    code = CLI_START.format(argv=["dagwright", *(a.format(tmp=tmp_path) for a in argv)])
    env = {k: v for k, v in os.environ.items() if not k.startswith("DAGWRIGHT_")}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO
    )
    assert out.returncode == 0, out.stderr
    loaded = set(json.loads(out.stderr.splitlines()[-1]))
    assert sorted(loaded & set(not_loaded)) == []
