"""The shape of the package: a pure core, and a small pinned public surface."""

from __future__ import annotations

import json
import subprocess
import sys

import dagwright
import dagwright.executors
import dagwright.planner
import dagwright.tools

CORE = [
    "dagwright.planner.schema",
    "dagwright.planner.references",
    "dagwright.planner.plan",
    "dagwright.planner.validate",
    "dagwright.planner.source",
    "dagwright.executors.engine",
    "dagwright.executors.events",
    "dagwright.executors.retry",
    "dagwright.executors.verify",
    "dagwright.executors.runner",
    "dagwright.executors.local",
    "dagwright.executors.store.base",
    "dagwright.executors.store.memory",
    "dagwright.executors.decisions",
    "dagwright.executors.lineage",
    "dagwright.executors.replay",
    "dagwright.executors.distributed",
    "dagwright.tools",
]
IO_LIBRARIES = [
    "celery",
    "redis",
    "sqlalchemy",
    "psycopg",
    "httpx",
    "requests",
    "instructor",
    "outlines",
    "yaml",
    "kombu",
    "openai",
    "transformers",
]


def test_the_core_imports_no_io_library() -> None:
    code = (
        "import sys, json\n"
        f"for m in {CORE!r}: __import__(m)\n"
        f"print(json.dumps(sorted(set({IO_LIBRARIES!r}) & {{n.split('.')[0] for n in sys.modules}})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


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
