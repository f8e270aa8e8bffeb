"""A server submitting the same workflow again and again (a known file, or the same text)
validates it once: the parse and the checks are kept while the file, the text and the registry
are unchanged, and redone when any of them changes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dagwright.errors import PlanError
from dagwright.planner import prepare as prepare_module
from dagwright.planner.prepare import prepare, prepare_text
from dagwright.tools.registry import ToolRegistry, default_registry

WORKFLOW = """\
name: cached
inputs:
  n: {type: integer}
steps:
  - id: a
    uses: echo
    with: {n: "${{ inputs.n }}"}
"""


@pytest.fixture
def checks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The workflows validated (``_semantic_issues`` calls), by name."""
    seen: list[str] = []
    real = prepare_module._semantic_issues

    def counted(wf, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(wf.name)
        return real(wf, *args, **kwargs)

    monkeypatch.setattr(prepare_module, "_semantic_issues", counted)
    return seen


def test_a_file_is_validated_once_until_it_changes(tmp_path: Path, checks: list[str]) -> None:
    registry = default_registry.copy()
    path = tmp_path / "wf.yaml"
    path.write_text(WORKFLOW)
    first = prepare(path, registry, inputs={"n": 1})
    second = prepare(path, registry, inputs={"n": 2})
    assert (first.inputs, second.inputs) == ({"n": 1}, {"n": 2}), "inputs are per call"
    assert checks == ["cached"]
    path.write_text(WORKFLOW.replace("name: cached", "name: edited"))
    os.utime(path, ns=(1, 1))  # even with an old modification time: the size changed
    assert prepare(path, registry, inputs={"n": 3}).workflow.name == "edited"
    assert checks == ["cached", "edited"]


def test_bad_inputs_are_refused_on_every_call(tmp_path: Path, checks: list[str]) -> None:
    registry = default_registry.copy()
    path = tmp_path / "wf.yaml"
    path.write_text(WORKFLOW)
    for _ in range(2):
        with pytest.raises(PlanError, match="inputs.n"):
            prepare(path, registry, inputs={"n": "three"})
    assert checks == ["cached"]


def test_text_is_validated_again_when_the_registry_changes(checks: list[str]) -> None:
    registry: ToolRegistry = default_registry.copy()
    text = WORKFLOW.replace("uses: echo", "uses: shout")
    for _ in range(2):
        with pytest.raises(PlanError, match="shout"):
            prepare_text(text, registry, inputs={"n": 1})
    assert checks == ["cached"], "the refusal is kept too, while nothing changed"

    @registry.tool(name="shout")
    def shout(n: int) -> dict[str, int]:
        return {"n": n}

    assert prepare_text(text, registry, inputs={"n": 1}).workflow.steps[0].uses == "shout"
    assert checks == ["cached", "cached"]


def test_another_registry_is_another_check(checks: list[str]) -> None:
    text = WORKFLOW.replace("name: cached", "name: twice")
    prepare_text(text, default_registry.copy(), inputs={"n": 1})
    prepare_text(text, default_registry.copy(), inputs={"n": 1})
    assert checks == ["twice", "twice"]


def test_a_module_loaded_into_the_registry_later_is_seen(tmp_path: Path, checks: list[str]) -> None:
    """A registry that loads a module imported before (its tools join it without a new
    ``@tool`` call) is a changed registry: what was refused before is validated again."""
    import sys

    (tmp_path / "shouting_tools.py").write_text(
        "from dagwright.tools import tool\n\n"
        "@tool(name='shout.loud')\n"
        "def loud(n: int) -> dict[str, int]:\n"
        "    return {'n': n}\n"
    )
    sys.path.insert(0, str(tmp_path))
    try:
        default_registry.copy().load_module("shouting_tools")  # imported once, elsewhere
        registry = default_registry.copy()
        text = WORKFLOW.replace("uses: echo", "uses: shout.loud").replace("cached", "late")
        with pytest.raises(PlanError, match="shout.loud"):
            prepare_text(text, registry, inputs={"n": 1})
        registry.load_module("shouting_tools")
        assert prepare_text(text, registry, inputs={"n": 1}).workflow.steps[0].uses == "shout.loud"
        assert checks == ["late", "late"]
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("shouting_tools", None)
