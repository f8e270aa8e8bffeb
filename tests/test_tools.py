"""The tool registry: typed signatures become schemas; user modules load from a workflow."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from dagwright.errors import DagwrightError, PlanError
from dagwright.planner.prepare import prepare
from dagwright.tools import ToolContext, ToolRegistry, default_registry


def test_builtins_are_registered_with_schemas() -> None:
    assert {"echo", "sleep", "flaky"} <= set(default_registry.names())
    sleep = default_registry.get("sleep")
    assert sleep.args_schema()["required"] == ["ms"]
    assert sleep.output_schema["properties"] == {
        "slept_ms": {"title": "Slept Ms", "type": "integer"}
    }
    assert sleep.is_async
    assert sleep.args_schema()["properties"]["ms"]["minimum"] == 0, "Annotated bounds are kept"


class Out(BaseModel):
    total: int


def test_a_signature_becomes_a_validating_model(registry: ToolRegistry) -> None:
    @registry.tool("math.add")
    def add(a: int, b: int = 1, *, ctx: ToolContext) -> Out:
        """Add two numbers."""
        return Out(total=a + b)

    t = registry.get("math.add")
    assert t.description == "Add two numbers."
    assert t.context_param == "ctx"
    assert set(t.args_schema()["properties"]) == {"a", "b"}
    kwargs = t.bind({"a": 2}, ToolContext("r", "s", 1))
    assert kwargs["a"] == 2 and kwargs["b"] == 1 and kwargs["ctx"].attempt == 1
    with pytest.raises(ValidationError):
        t.bind({"a": "two"}, ToolContext("r", "s", 1))
    with pytest.raises(ValidationError):
        t.bind({"a": 1, "c": 3}, ToolContext("r", "s", 1))
    assert t.to_json(Out(total=3)) == {"total": 3}


def test_names_are_checked_and_clashes_refused(registry: ToolRegistry) -> None:
    with pytest.raises(DagwrightError, match="not valid"):
        registry.register(lambda: 1, name="Bad Name")

    def one() -> int:
        return 1

    def other() -> int:
        return 2

    registry.register(one, name="x.one")
    with pytest.raises(DagwrightError, match="already registered"):
        registry.register(other, name="x.one")


def test_a_workflow_loads_its_tool_module_from_its_folder(
    tmp_path: Path, registry: ToolRegistry
) -> None:
    (tmp_path / "my_tools.py").write_text(
        textwrap.dedent("""
        from dagwright.tools import tool

        @tool("my.shout")
        def shout(text: str) -> str:
            return text.upper() + "!"
    """)
    )
    (tmp_path / "wf.yaml").write_text(
        textwrap.dedent("""
        name: uses-my-tools
        tools: [my_tools]
        steps:
          - {id: s, uses: my.shout, with: {text: hi}}
    """)
    )
    ready = prepare(tmp_path / "wf.yaml", registry)
    assert "my.shout" in ready.registry
    assert ready.registry.get("my.shout").fn(text="hi") == "HI!"
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntools: [no_such_module]\nsteps: [{id: s, uses: my.shout}]\n")
    with pytest.raises(PlanError) as exc:
        prepare(bad, registry)
    messages = [i.message for i in exc.value.issues]
    assert any("cannot load tool module 'no_such_module'" in m for m in messages)
    assert exc.value.issues[0].line == 2


def test_built_ins_load_once_and_every_thread_sees_them() -> None:
    """A fresh interpreter: 16 threads look a built-in up at once (a threads-pool worker's
    first tasks); none may find the registry half loaded."""
    import subprocess
    import sys

    code = (
        "import threading\n"
        "from dagwright.tools import default_registry\n"
        "barrier = threading.Barrier(16); found = []\n"
        "def look():\n"
        "    barrier.wait(); found.append('sleep' in default_registry)\n"
        "threads = [threading.Thread(target=look) for _ in range(16)]\n"
        "[t.start() for t in threads]; [t.join() for t in threads]\n"
        "print(sum(found))\n"
    )
    for _ in range(3):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert out.stdout.strip() == "16", out.stderr
