"""Tools run under their driver's settings, read once at the driver's edge (the CLI with its
``--db``, a worker, the API server), handed to them as ``ToolContext.settings``; a tool called
outside a driver reads the environment's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dagwright.executors.distributed.engine import Engine
from dagwright.executors.local import LocalExecutor
from dagwright.executors.store.memory import MemoryTraceStore
from dagwright.executors.store.sql import SqlTraceStore
from dagwright.planner.schema import Workflow
from dagwright.settings import Settings, tool_settings
from dagwright.tools import ToolContext, ToolRegistry

WF = Workflow.model_validate({"name": "seen", "steps": [{"id": "a", "uses": "test.seen"}]})


@pytest.fixture
def seen(registry: ToolRegistry) -> list[Any]:
    got: list[Any] = []

    def see(ctx: ToolContext | None = None) -> dict[str, str]:
        """A tool that may also be called directly (``ctx`` optional)."""
        got.append(tool_settings(ctx).model)
        return {"model": tool_settings(ctx).model}

    registry.register(see, name="test.seen")
    return got


def test_the_local_executor_hands_its_settings_to_tools(
    registry: ToolRegistry, seen: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DAGWRIGHT_MODEL", "openai:from-the-environment")
    settings = Settings(model="openai:from-the-edge")
    result = LocalExecutor(MemoryTraceStore(), registry, settings=settings).run(WF)
    assert result.status == "succeeded", result.error
    assert seen == ["openai:from-the-edge"]


def test_the_distributed_engine_hands_its_settings_to_tools(
    registry: ToolRegistry, seen: list[Any], tmp_path: Path
) -> None:
    store = SqlTraceStore(str(tmp_path / "t.db"))
    eng = Engine(store, registry, settings=Settings(model="openai:the-workers"))
    run_id, first = eng.start(WF, {})
    assert eng.execute(first[0]) == []
    assert seen == ["openai:the-workers"]
    store.close()


def test_a_tool_outside_a_driver_reads_the_environment(
    registry: ToolRegistry, seen: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DAGWRIGHT_MODEL", "openai:from-the-environment")
    assert registry.get("test.seen").fn() == {"model": "openai:from-the-environment"}
    assert "ctx" not in registry.get("test.seen").args_model.model_fields, "not an argument"
