"""Build an index of a folder (incrementally), open one (cached per process), search it.

Search modes: ``bm25`` (the words: names, ids, acronyms), ``dense`` (the meaning: cosine
similarity of the embeddings), ``hybrid`` (the default: reciprocal rank fusion of the top
``DEPTH`` of both rankings, ``fusion.K`` = 10, BM25 weighted ``fusion.BM25_WEIGHT`` = 0.5).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dagwright.errors import DagwrightError
from dagwright.retrieval import store
from dagwright.retrieval.chunking import (
    CHUNK_OVERLAP,
    CHUNK_SIZE,
    TEXT_SUFFIXES,
    Chunk,
    chunk_document,
    in_context,
    read_folder,
)
from dagwright.retrieval.embedding import DEFAULT_MODEL, Embedder, load_embedder, require
from dagwright.retrieval.fusion import BM25_WEIGHT, K, rrf
from dagwright.retrieval.terms import VERSION as TERMS
from dagwright.retrieval.terms import terms

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

MODES = ("hybrid", "bm25", "dense")
CONTEXT = "title"
"""What a chunk is indexed with besides its text (``chunking.in_context``); in the manifest."""
DEPTH = 100
"""How many of each ranking hybrid search fuses."""


def _tokenize(texts: list[str]) -> list[list[str]]:
    return [terms(t) for t in texts]


@dataclass
class BuildReport:
    name: str
    path: str
    model: str
    files: int
    changed: list[str] = field(default_factory=list)
    """Files new or edited since the last build: their chunks were embedded."""
    removed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    chunks: int = 0
    embedded: int = 0
    """Chunks embedded by this build (the others' embeddings were kept)."""
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def build_index(
    name: str,
    folder: Path,
    root: Path,
    *,
    model: str = "",
    size: int = CHUNK_SIZE,
    overlap: int = CHUNK_OVERLAP,
    embedder: Embedder | None = None,
    now: float | None = None,
) -> BuildReport:
    """Index the text files of ``folder`` as ``name`` under ``root``. A file whose content hash,
    the model and the chunking are unchanged since the last build keeps its chunks' embeddings;
    only the others are embedded. BM25 is rebuilt whole (it is cheap)."""
    bm25s = require("bm25s")  # first: without the extra, say how to install it
    import numpy as np

    started = time.perf_counter()
    home = store.index_path(root, name)
    docs, skipped = read_folder(folder)
    if not docs:
        raise DagwrightError(
            f"no text files in {folder} (indexed: {', '.join(TEXT_SUFFIXES)})"
            + (f"; left out: {', '.join(skipped)}" if skipped else "")
        )
    model = model or (embedder.name if embedder is not None else DEFAULT_MODEL)
    settings = {
        "model": model,
        "chunk_size": size,
        "overlap": overlap,
        "tokenizer": TERMS,
        "context": CONTEXT,
    }
    old = _previous(home, settings)
    titles = {d.doc_id: d.title for d in docs}
    chunks: list[Chunk] = []
    rows: list[int | None] = []  # per chunk: its row in the old embeddings, or None: embed it
    changed = []
    for doc in docs:
        before = old.files.get(doc.doc_id)
        if before is not None and before["sha256"] == doc.sha256:
            first = old.first[doc.doc_id]
            chunks += old.chunks[first : first + before["chunks"]]
            rows += range(first, first + before["chunks"])
        else:
            changed.append(doc.doc_id)
            new = chunk_document(doc.doc_id, doc.text, size, overlap)
            chunks += new
            rows += [None] * len(new)
    if not chunks:
        raise DagwrightError(f"the text files in {folder} are empty: nothing to index")
    todo = [i for i, row in enumerate(rows) if row is None]
    kept = [(i, row) for i, row in enumerate(rows) if row is not None]
    vectors = _vectors(len(chunks), old.embeddings, kept)
    if todo:
        embedder = embedder or load_embedder(model)
        fresh = embedder.embed([in_context(titles[chunks[i].doc_id], chunks[i]) for i in todo])
        if vectors.shape[1] != fresh.shape[1]:
            vectors = np.zeros((len(chunks), fresh.shape[1]), dtype=np.float32)
        vectors[todo] = fresh
    dim = int(vectors.shape[1])
    retriever = bm25s.BM25()
    retriever.index(
        _tokenize([in_context(titles[c.doc_id], c) for c in chunks]), show_progress=False
    )
    generation = store.new_generation(home)
    retriever.save(str(generation / "bm25"), show_progress=False)
    np.save(generation / "embeddings.npy", vectors, allow_pickle=False)
    store.write_json(generation / "chunks.json", [c.as_dict() for c in chunks])
    counts: dict[str, int] = {}
    for c in chunks:
        counts[c.doc_id] = counts.get(c.doc_id, 0) + 1
    manifest = {
        "format": store.FORMAT,
        "name": name,
        "source": str(folder.resolve()),
        **settings,
        "dim": dim,
        "chunks": len(chunks),
        "built_at": time.time() if now is None else now,
        "files": {d.doc_id: {"sha256": d.sha256, "chunks": counts.get(d.doc_id, 0)} for d in docs},
        "skipped": skipped,
    }
    store.write_json(generation / "manifest.json", manifest)
    store.publish(home, generation)
    return BuildReport(
        name=name,
        path=str(home),
        model=model,
        files=len(docs),
        changed=changed,
        removed=sorted(set(old.files) - {d.doc_id for d in docs}),
        skipped=skipped,
        chunks=len(chunks),
        embedded=len(todo),
        seconds=round(time.perf_counter() - started, 3),
    )


@dataclass
class _Previous:
    files: dict[str, Any] = field(default_factory=dict)
    first: dict[str, int] = field(default_factory=dict)
    chunks: list[Chunk] = field(default_factory=list)
    embeddings: npt.NDArray[np.float32] | None = None


def _vectors(
    n: int, old: npt.NDArray[np.float32] | None, kept: list[tuple[int, int]]
) -> npt.NDArray[np.float32]:
    """``n`` rows, those of ``kept`` (new row, old row) copied from the old embeddings."""
    import numpy as np

    vectors = np.zeros((n, 0 if old is None else old.shape[1]), dtype=np.float32)
    if kept and old is not None:
        vectors[[i for i, _ in kept]] = old[[row for _, row in kept]]
    return vectors


def _previous(home: Path, settings: dict[str, Any]) -> _Previous:
    """The last build's chunks and embeddings, when its model and chunking are these."""
    try:
        generation = store.current_generation(home)
        if generation is None:
            return _Previous()
        manifest = store.read_manifest(generation)
    except DagwrightError:
        return _Previous()  # a damaged or older index: built again whole
    if any(manifest.get(k) != v for k, v in settings.items()):
        return _Previous()
    import numpy as np

    chunks = [Chunk(**c) for c in store.read_json(generation / "chunks.json")]
    first: dict[str, int] = {}
    for i, c in enumerate(chunks):
        first.setdefault(c.doc_id, i)
    embeddings = np.load(generation / "embeddings.npy", allow_pickle=False)
    return _Previous(manifest["files"], first, chunks, embeddings)


class Index:
    """An index loaded whole: chunks, embeddings, BM25. The model loads on the first dense or
    hybrid search."""

    def __init__(self, name: str, generation: Path) -> None:
        bm25s = require("bm25s")  # first: without the extra, say how to install it
        import numpy as np

        self.name = name
        self.generation = generation
        self.manifest = store.read_manifest(generation)
        self.chunks = [Chunk(**c) for c in store.read_json(generation / "chunks.json")]
        self.embeddings = np.load(generation / "embeddings.npy", allow_pickle=False)
        self.bm25 = bm25s.BM25.load(str(generation / "bm25"), show_progress=False)
        self.embedder: Embedder | None = None

    def bm25_scores(self, query: str) -> npt.NDArray[np.float32]:
        import numpy as np

        tokens = _tokenize([query])[0]
        if not tokens or not self.chunks:
            return np.zeros(len(self.chunks), dtype=np.float32)
        return np.asarray(self.bm25.get_scores(tokens), dtype=np.float32)

    def dense_scores(self, query: str) -> npt.NDArray[np.float32]:
        import numpy as np

        if self.embedder is None:
            self.embedder = load_embedder(self.manifest["model"])
        if not self.chunks:
            return np.zeros(0, dtype=np.float32)
        vector = self.embedder.embed([query])[0]
        return np.asarray(self.embeddings @ vector, dtype=np.float32)

    def search(
        self,
        query: str,
        k: int = 5,
        mode: str = "hybrid",
        *,
        rrf_k: float = K,
        bm25_weight: float = BM25_WEIGHT,
        depth: int = DEPTH,
    ) -> list[dict[str, Any]]:
        """The ``k`` best chunks for ``query``: ``doc_id``, ``chunk``, ``start``, ``end``,
        ``text``, the ``bm25`` and ``dense`` scores (None where the mode did not compute one),
        ``score`` (the mode's: RRF for hybrid) and ``rank`` (from 1). ``rrf_k``, ``bm25_weight``
        and ``depth`` (how many of each ranking hybrid fuses) are for benchmarks."""
        if mode not in MODES:
            raise DagwrightError(f"unknown search mode {mode!r}: use {', '.join(MODES)}")
        bm25 = self.bm25_scores(query) if mode != "dense" else None
        dense = self.dense_scores(query) if mode != "bm25" else None
        if mode == "bm25":
            assert bm25 is not None
            ranked = [(i, float(bm25[i])) for i in _top(bm25, k, positive=True)]
        elif mode == "dense":
            assert dense is not None
            ranked = [(i, float(dense[i])) for i in _top(dense, k)]
        else:
            assert bm25 is not None and dense is not None
            rankings = [_top(bm25, depth, positive=True), _top(dense, depth)]
            fused = rrf(rankings, rrf_k, [bm25_weight, 1.0])
            ranked = fused[:k]
        return [
            {
                **self.chunks[i].as_dict(),
                "bm25": None if bm25 is None else round(float(bm25[i]), 6),
                "dense": None if dense is None else round(float(dense[i]), 6),
                "score": round(score, 6),
                "rank": rank,
            }
            for rank, (i, score) in enumerate(ranked, start=1)
        ]


def _top(scores: npt.NDArray[np.float32], n: int, *, positive: bool = False) -> list[int]:
    """The indices of the ``n`` highest scores, best first (ties: the earlier chunk first);
    with ``positive``, only scores above 0 (BM25: chunks that share a term with the query)."""
    import numpy as np

    if positive:
        candidates = np.flatnonzero(scores > 0)
    else:
        candidates = np.arange(len(scores))
    if len(candidates) > n:
        part = np.argpartition(-scores[candidates], n - 1)[:n]
        candidates = candidates[part]
    order = np.lexsort((candidates, -scores[candidates]))
    return [int(i) for i in candidates[order]]


_open: dict[Path, Index] = {}
_open_lock = threading.Lock()


def open_index(name: str, root: Path) -> Index:
    """Index ``name`` under ``root``, loaded once per process and generation (a build in
    another process is seen at the next call). IndexNotFound when there is none."""
    generation = store.require_index(root, name)
    key = generation.parent.resolve()
    with _open_lock:
        found = _open.get(key)
        if found is None or found.generation != generation:
            found = _open[key] = Index(name, generation)
        return found


def search(
    name: str, query: str, root: Path, *, k: int = 5, mode: str = "hybrid"
) -> list[dict[str, Any]]:
    return open_index(name, root).search(query, k, mode)


__all__ = ["DEPTH", "MODES", "BuildReport", "Index", "build_index", "open_index", "search"]
