"""Large plans go through the planner in time linear in their size: YAML read by libyaml straight
into data (the same data and lines PyYAML's own path gives), dependency order without networkx
(the same order), and nothing of it changes what a workflow means. Timings are in
bench/scale_bench.py; these tests assert what is computed, and by which path."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import networkx as nx
import pytest
import yaml

from dagwright.errors import PlanError
from dagwright.planner import yaml_doc
from dagwright.planner.limits import Limits
from dagwright.planner.plan import Plan, step_deps
from dagwright.planner.schema import Workflow

DOCUMENTS = {
    "a workflow": (
        "name: wf\n"
        "inputs:\n  topic: {type: string, default: 'x: y'}\n"
        "steps:\n"
        "  - id: a\n    uses: echo\n    with: {text: '${{ inputs.topic }}', n: 3, f: 1.5}\n"
        "  - id: b\n    uses: echo\n    needs: [a]\n"
        "    with:\n      list: [1, two, 3.0, null, true, ~, '', \"q\"]\n"
        "      when: 2024-01-02\n      nested: {deep: [{x: [1, {y: z}]}]}\n"
        "output: '${{ steps.b.output }}'\n"
    ),
    "scalars of every core type": (
        "a: 0x1F\nb: 1_000\nc: .inf\nd: -.5e3\ne: off\nf: Yes\ng: NULL\nh: !!str 12\n"
        "i: !!binary aGVsbG8=\nj: 2001-12-14t21:59:43.10-05:00\nk: '007'\nl: |\n  block\n  text\n"
    ),
    "empty collections and flow style": "a: []\nb: {}\nc: [[], [{}]]\nd: {e: {f: []}}\n",
    "a list at the top": "- 1\n- [a, b]\n- {c: d}\n",
    "a scalar document": "just text\n",
}
GENERAL_ONLY = {
    "an alias": "a: &x {k: [1, 2]}\nb: *x\n",
    "a merge key": "base: &b {x: 1, y: 2}\nm:\n  <<: *b\n  y: 3\n",
    "a key that is not a string": "1: one\n2.5: two\nnull: three\n",
    "a set": "s: !!set {a, b}\n",
    "an aliased scalar": "a: &v text\nb: *v\n",
}


def _read(text: str, *, general: bool, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any]:
    with monkeypatch.context() as m:
        if general:  # as if the direct reading had found something it leaves to PyYAML

            def not_a_tree(*_: object) -> Any:
                raise yaml_doc._NotATree

            m.setattr(yaml_doc, "_read_tree", not_a_tree)
        data, source = yaml_doc.parse_yaml(text, "wf.yaml", Limits())
    return data, source.lines


@pytest.mark.parametrize("case", list(DOCUMENTS))
def test_the_direct_reading_gives_pyyamls_data_and_lines(
    case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = DOCUMENTS[case]
    data, lines = _read(text, general=False, monkeypatch=monkeypatch)
    assert data == yaml.safe_load(text)
    assert type(data) is type(yaml.safe_load(text))
    general_data, general_lines = _read(text, general=True, monkeypatch=monkeypatch)
    assert (data, lines) == (general_data, general_lines)


@pytest.mark.parametrize("case", list(DOCUMENTS) + list(GENERAL_ONLY))
def test_without_libyaml_the_pure_python_loader_reads_the_same(
    case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = {**DOCUMENTS, **GENERAL_ONLY}[case]
    fast = yaml_doc.parse_yaml(text, "wf.yaml", Limits())
    monkeypatch.setattr(yaml_doc, "_CLoader", None)  # PyYAML built without libyaml
    slow = yaml_doc.parse_yaml(text, "wf.yaml", Limits())
    assert (fast[0], fast[1].lines) == (slow[0], slow[1].lines)


def test_a_plain_workflow_needs_neither_the_pure_python_loader_nor_the_constructor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert yaml_doc._CLoader is not None, "PyYAML without libyaml: the slow path only"

    def refuse(*_: object, **__: object) -> Any:
        raise AssertionError("not on this path")

    monkeypatch.setattr(yaml_doc, "_BoundedLoader", refuse)
    monkeypatch.setattr(yaml.constructor.BaseConstructor, "construct_document", refuse)
    data, _ = yaml_doc.parse_yaml(DOCUMENTS["a workflow"], "wf.yaml", Limits())
    assert [s["id"] for s in data["steps"]] == ["a", "b"]


@pytest.mark.parametrize("case", list(GENERAL_ONLY))
def test_what_the_direct_reading_leaves_to_pyyaml_reads_as_pyyaml_reads_it(
    case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = GENERAL_ONLY[case]
    constructed: list[object] = []
    original = yaml.constructor.BaseConstructor.construct_document

    def counted(self: Any, node: Any) -> Any:
        constructed.append(node)
        return original(self, node)

    monkeypatch.setattr(yaml.constructor.BaseConstructor, "construct_document", counted)
    data, _ = yaml_doc.parse_yaml(text, "wf.yaml", Limits())
    assert data == yaml.safe_load(text) and len(constructed) == 2  # ours, and safe_load's


def test_a_duplicate_key_is_located_on_both_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    text = "name: x\nsteps: []\nname: y\n"
    for general in (False, True):
        with pytest.raises(PlanError) as info:
            _read(text, general=general, monkeypatch=monkeypatch)
        [issue] = info.value.issues
        assert (issue.line, issue.field) == (3, "name")
        assert "duplicate key 'name' (first at line 1)" in issue.message


def _random_workflow(seed: int, n: int) -> Workflow:
    """Steps in a random order with random dependencies on earlier-built ones, half of them
    references in ``with``, half ``needs``."""
    rng = random.Random(seed)
    ids = [f"s{i}" for i in range(n)]
    steps: list[dict[str, Any]] = []
    for i, sid in enumerate(ids):
        deps = rng.sample(ids[:i], k=min(i, rng.randint(0, 3)))
        refs = {f"in{j}": "${{ steps." + d + ".output }}" for j, d in enumerate(deps) if j % 2}
        needs = [d for j, d in enumerate(deps) if not j % 2]
        steps.append({"id": sid, "uses": "echo", "with": refs, "needs": needs})
    rng.shuffle(steps)  # order of the file is not dependency order
    return Workflow.model_validate({"name": f"r{seed}", "steps": steps})


@pytest.mark.parametrize("seed", range(6))
def test_the_dependency_order_is_the_one_networkx_gives(seed: int) -> None:
    wf = _random_workflow(seed, 300)
    graph: nx.DiGraph[str] = nx.DiGraph()  # as Plan.from_workflow built it before
    graph.add_nodes_from(s.id for s in wf.steps)
    graph.add_edges_from((d, s.id) for s in wf.steps for d in step_deps(s))
    assert list(Plan.from_workflow(wf).order) == list(nx.topological_sort(graph))


def test_a_cycle_is_still_refused_when_planning() -> None:
    wf = Workflow.model_validate(
        {
            "name": "c",
            "steps": [
                {"id": "a", "uses": "echo", "needs": ["b"]},
                {"id": "b", "uses": "echo", "needs": ["a"]},
            ],
        }  # fmt: skip
    )
    with pytest.raises(ValueError, match="cycle"):
        Plan.from_workflow(wf)


@pytest.mark.parametrize("as_json", [False, True])
def test_after_a_local_run_the_cli_reads_nothing_back(
    as_json: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The summary comes from the executor's state and what started the run: no read of the
    run's record or its events (whose cost grew with the trace); the lines printed without
    --json do not list the steps."""
    from typer.testing import CliRunner

    from dagwright.cli.main import app
    from dagwright.executors.store.sql import SqlTraceStore

    reads: list[str] = []
    for name in ("events", "get_run", "list_runs"):
        original = getattr(SqlTraceStore, name)

        def counted(self: Any, *a: Any, _name: str = name, _f: Any = original, **k: Any) -> Any:
            reads.append(_name)
            return _f(self, *a, **k)

        monkeypatch.setattr(SqlTraceStore, name, counted)
    for key in [k for k in os.environ if k.startswith("DAGWRIGHT_")]:
        monkeypatch.delenv(key)
    lines = [f"  - {{id: s{i}, uses: echo, with: {{i: {i}}}}}" for i in range(30)]
    lines = [ln[:-1] + (f", needs: [s{i - 1}]}}" if i else "}") for i, ln in enumerate(lines)]
    steps = "".join(ln + "\n" for ln in lines)
    (tmp_path / "wf.yaml").write_text("name: thirty\nsteps:\n" + steps)
    args = ["run", str(tmp_path / "wf.yaml"), "--db", str(tmp_path / "t.db")]
    result = CliRunner().invoke(app, args + (["--json"] if as_json else []))
    assert result.exit_code == 0, result.output
    assert reads == []
    if as_json:
        summary = json.loads(result.stdout)
        assert summary["status"] == "succeeded" and len(summary["steps"]) == 30
    else:
        assert "succeeded" in result.stdout and "s29  1 attempt" in result.stdout
