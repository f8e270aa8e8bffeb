"""Reciprocal rank fusion (Cormack, Clarke and Büttcher, 2009): one ranking from several.

``score(d) = Σ w_i / (k + rank_i(d))``, ranks from 1; an item missing from a ranking gets
nothing from it. The classic constant is k = 60 with equal weights. ``dagwright`` fuses BM25
and dense rankings with ``K`` = 10 and BM25 weighted ``BM25_WEIGHT`` = 0.5: on the labelled
queries of ``bench/retrieval_bench.py`` the classic setting let BM25's long tail of weak matches
(chunks sharing one common word with the query) outvote the dense ranking's first answers, and
hybrid ranked below dense alone (bench/README.md, "Retrieval", has the sweep).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import TypeVar

K = 10
"""The rank constant of hybrid search."""
BM25_WEIGHT = 0.5
"""The weight of the BM25 ranking in hybrid search (the dense ranking's is 1)."""

T = TypeVar("T", bound=Hashable)


def rrf(
    rankings: Sequence[Sequence[T]], k: float = 60, weights: Sequence[float] | None = None
) -> list[tuple[T, float]]:
    """Fuse rankings (each best first) into ``(item, score)`` pairs, best first.

    ``weights``: one per ranking (default: all 1). Ties keep the order in which the items were
    first seen (the first ranking's order first), so the result is deterministic."""
    if k < 0:
        raise ValueError(f"k must be 0 or more, got {k}")
    weights = [1.0] * len(rankings) if weights is None else list(weights)
    if len(weights) != len(rankings):
        raise ValueError(f"{len(weights)} weights for {len(rankings)} rankings")
    scores: dict[T, float] = {}
    for ranking, weight in zip(rankings, weights, strict=True):
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + weight / (k + rank)
    seen = {item: i for i, item in enumerate(scores)}
    return sorted(scores.items(), key=lambda pair: (-pair[1], seen[pair[0]]))


__all__ = ["BM25_WEIGHT", "K", "rrf"]
