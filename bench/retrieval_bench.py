"""dagwright retrieval benchmark: quality on a labelled query set, then speed on 10,000 chunks.

Run from the repository root (needs the extra: ``pip install -e '.[retrieval]'``)::

    .venv/bin/python bench/retrieval_bench.py                 # quality + speed (~2-3 min, 2 cores)
    .venv/bin/python bench/retrieval_bench.py --no-speed      # quality only (~20 s)
    .venv/bin/python bench/retrieval_bench.py --sweep         # quality for other chunk sizes, RRF k

**Quality.** The example corpus (``workflows/examples/corpus``, 24 short Markdown files about a
made-up home battery) is indexed with the defaults; each query of
``bench/retrieval_queries.json`` (33 queries, each with the documents that answer it; "id"
queries name error codes, serial numbers, models, acronyms; "paraphrase" queries ask in other
words) is searched in each mode. Relevance is per document: a passage counts when its document is
one of the query's. recall@5 = the share of a query's relevant documents among the documents of
the top 5 passages, averaged; MRR@10 = 1 / the rank of the first relevant passage in the top 10
(0 when none), averaged.

**Speed.** 10,000 chunks are synthesised (500 Markdown files of 20 paragraphs: words of the
corpus, with error codes and serial numbers, seeded), written to a temporary folder and indexed:
throughput = chunks / wall time of ``build_index`` (read, chunk, embed, BM25, save), and the
embedding alone. Then one file is changed and the index built again (what is re-embedded). Query
latency: the index is opened (and the model loaded) first, then each mode answers the same
queries, k=5; p50 and p99 of the wall time per query, in this process, on the CPU.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "workflows" / "examples" / "corpus"
QUERIES = Path(__file__).resolve().parent / "retrieval_queries.json"
MODES = ("bm25", "dense", "hybrid")


def quality(
    root: Path,
    queries: list[dict[str, Any]],
    *,
    size: int,
    overlap: int,
    rrf_k: float,
    weight: float,
) -> dict[str, dict[str, float]]:
    from dagwright.retrieval import build_index, open_index

    name = f"q{size}-{overlap}"
    build_index(name, CORPUS, root, size=size, overlap=overlap)
    index = open_index(name, root)
    results: dict[str, dict[str, float]] = {}
    for mode in MODES:
        per_kind: dict[str, list[tuple[float, float]]] = {}
        for n, q in enumerate(queries):
            found = index.search(q["q"], 10, mode, rrf_k=rrf_k, bm25_weight=weight)
            docs = [p["doc_id"] for p in found]
            relevant = set(q["relevant"])
            recall = len(relevant & set(docs[:5])) / len(relevant)
            first = next((i for i, d in enumerate(docs, 1) if d in relevant), None)
            rr = 1 / first if first else 0.0
            for kind in ("all", q["kind"], ("even", "odd")[n % 2]):
                per_kind.setdefault(kind, []).append((recall, rr))
        for kind, pairs in per_kind.items():
            results.setdefault(f"{mode}", {})[f"recall@5 {kind}"] = statistics.mean(
                r for r, _ in pairs
            )
            results[mode][f"MRR@10 {kind}"] = statistics.mean(m for _, m in pairs)
    return results


def print_sweep(rows: list[tuple[str, dict[str, dict[str, float]]]]) -> None:
    """Hybrid against the better of BM25 and dense, per setting, on all queries and on each
    half (even and odd positions in the file: a rough check that a setting is not fitted to a
    few queries)."""
    print("\nSweep (hybrid recall@5 / MRR@10; ✓ = not below BM25 nor dense on both)")
    print("| setting | all | even half | odd half | dense all | bm25 all |")
    print("|---|---|---|---|---|---|")
    for title, res in rows:
        cells = []
        for part in ("all", "even", "odd"):
            r, m = res["hybrid"][f"recall@5 {part}"], res["hybrid"][f"MRR@10 {part}"]
            best_r = max(res[x][f"recall@5 {part}"] for x in ("bm25", "dense"))
            best_m = max(res[x][f"MRR@10 {part}"] for x in ("bm25", "dense"))
            mark = " ✓" if r >= best_r and m >= best_m else ""
            cells.append(f"{r:.3f} / {m:.3f}{mark}")
        dense = f"{res['dense']['recall@5 all']:.3f} / {res['dense']['MRR@10 all']:.3f}"
        bm25 = f"{res['bm25']['recall@5 all']:.3f} / {res['bm25']['MRR@10 all']:.3f}"
        print(f"| {title} | " + " | ".join(cells) + f" | {dense} | {bm25} |")


def print_quality(results: dict[str, dict[str, float]], title: str) -> None:
    cols = ["recall@5 all", "MRR@10 all", "recall@5 id", "MRR@10 id"]
    cols += ["recall@5 paraphrase", "MRR@10 paraphrase"]
    print(f"\n{title}")
    print("| mode | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    for mode in MODES:
        print(f"| {mode} | " + " | ".join(f"{results[mode][c]:.3f}" for c in cols) + " |")


def synthesise(folder: Path, chunks: int, seed: int = 7) -> int:
    """Markdown files of 20 paragraphs each (~one chunk per paragraph) until ``chunks``."""
    from dagwright.retrieval import chunk_document

    rng = random.Random(seed)
    words = re.findall(r"[A-Za-z]{3,}", " ".join(p.read_text() for p in CORPUS.glob("*.md")))
    total, n = 0, 0
    while total < chunks:
        paragraphs = []
        for _ in range(20):
            para: list[str] = []
            while sum(len(w) + 1 for w in para) < 430:
                roll = rng.random()
                if roll < 0.03:
                    para.append(f"E-{rng.randint(100, 999)}")
                elif roll < 0.05:
                    para.append(f"KS{rng.choice([5, 10, 20])}-{rng.randint(10**7, 10**8 - 1)}")
                else:
                    para.append(rng.choice(words))
            paragraphs.append(" ".join(para) + ".")
        text = f"# Synthetic document {n}\n\n" + "\n\n".join(paragraphs) + "\n"
        count = len(chunk_document(f"doc{n}.md", text))
        while total + count > chunks:  # the last file: as many chunks as are missing
            paragraphs.pop()
            text = f"# Synthetic document {n}\n\n" + "\n\n".join(paragraphs) + "\n"
            count = len(chunk_document(f"doc{n}.md", text))
        (folder / f"doc{n:04d}.md").write_text(text)
        total, n = total + count, n + 1
    return n


class Timed:
    """The embedder, timing its calls."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.name, self.seconds, self.texts = inner, inner.name, 0.0, 0

    def embed(self, texts: list[str]) -> Any:
        started = time.perf_counter()
        try:
            return self.inner.embed(texts)
        finally:
            self.seconds += time.perf_counter() - started
            self.texts += len(texts)


def speed(root: Path, n_chunks: int, queries: list[str], repeat: int) -> None:
    import torch

    from dagwright.retrieval import build_index, load_embedder, open_index

    embedder = Timed(load_embedder())  # loaded before the clock starts
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        files = synthesise(folder, n_chunks)
        started = time.perf_counter()
        report = build_index("speed", folder, root, embedder=embedder)
        wall = time.perf_counter() - started
        print(f"\nIndexing: {report.chunks} chunks in {files} files, torch threads "
              f"{torch.get_num_threads()}")  # fmt: skip
        print(f"- build: {wall:.1f} s → {report.chunks / wall:.0f} chunks/s")
        print(f"- of which embedding: {embedder.seconds:.1f} s → "
              f"{embedder.texts / embedder.seconds:.0f} chunks/s")  # fmt: skip
        changed = folder / "doc0003.md"
        changed.write_text(changed.read_text() + "\nAn added paragraph about E-777.\n")
        embedder.seconds, embedder.texts = 0.0, 0
        started = time.perf_counter()
        again = build_index("speed", folder, root, embedder=embedder)
        print(f"- rebuild after editing 1 file: {time.perf_counter() - started:.2f} s, "
              f"{again.embedded} chunks re-embedded of {again.chunks}")  # fmt: skip
    started = time.perf_counter()
    index = open_index("speed", root)
    print(f"- open (load chunks, embeddings, BM25): {time.perf_counter() - started:.2f} s")
    print(f"\nQuery latency, {report.chunks} chunks, k=5, {len(queries) * repeat} queries a mode")
    print("| mode | p50 ms | p99 ms | mean ms |")
    print("|---|---|---|---|")
    for mode in MODES:
        for q in queries[:5]:  # warm-up
            index.search(q, 5, mode)
        times = []
        for _ in range(repeat):
            for q in queries:
                started = time.perf_counter()
                index.search(q, 5, mode)
                times.append((time.perf_counter() - started) * 1000)
        times.sort()
        p99 = times[min(len(times) - 1, round(0.99 * (len(times) - 1)))]
        print(f"| {mode} | {statistics.median(times):.2f} | {p99:.2f} | "
              f"{statistics.mean(times):.2f} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-speed", action="store_true", help="quality only")
    parser.add_argument("--sweep", action="store_true", help="quality for other chunk sizes and k")
    parser.add_argument("--chunks", type=int, default=10_000, help="chunks of the speed index")
    parser.add_argument("--repeat", type=int, default=4, help="passes over the query list")
    args = parser.parse_args()
    try:
        import bm25s  # noqa: F401
        import sentence_transformers  # noqa: F401
    except ImportError:
        sys.exit("needs the retrieval extra: pip install -e '.[retrieval]'")
    from dagwright.retrieval.chunking import CHUNK_OVERLAP, CHUNK_SIZE
    from dagwright.retrieval.fusion import BM25_WEIGHT, K

    labelled = json.loads(QUERIES.read_text())["queries"]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        default = dict(size=CHUNK_SIZE, overlap=CHUNK_OVERLAP, rrf_k=K, weight=BM25_WEIGHT)
        results = quality(root, labelled, **default)  # type: ignore[arg-type]
        print(f"Quality: {len(labelled)} queries, chunks of {CHUNK_SIZE} (overlap "
              f"{CHUNK_OVERLAP}), hybrid = RRF k={K:g}, BM25 weight {BM25_WEIGHT:g} "
              f"({time.perf_counter() - started:.1f} s with the model's load)")  # fmt: skip
        print_quality(results, "defaults")
        if args.sweep:
            rows = []
            for size, overlap, k, w in [
                (CHUNK_SIZE, CHUNK_OVERLAP, 60, 1.0),
                (CHUNK_SIZE, CHUNK_OVERLAP, 60, 0.5),
                (CHUNK_SIZE, CHUNK_OVERLAP, 10, 1.0),
                (CHUNK_SIZE, CHUNK_OVERLAP, 10, 0.7),
                (CHUNK_SIZE, CHUNK_OVERLAP, 10, 0.5),
                (CHUNK_SIZE, CHUNK_OVERLAP, 5, 0.5),
                (400, 80, K, BM25_WEIGHT),
                (900, 150, K, BM25_WEIGHT),
            ]:
                res = quality(root, labelled, size=size, overlap=overlap, rrf_k=k, weight=w)
                rows.append((f"chunks {size}/{overlap}, k={k:g}, BM25 weight {w:g}", res))
            print_sweep(rows)
        if not args.no_speed:
            speed(root, args.chunks, [q["q"] for q in labelled], args.repeat)


if __name__ == "__main__":
    main()
