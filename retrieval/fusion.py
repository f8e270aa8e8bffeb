"""Reciprocal rank fusion (Cormack, Clarke and Büttcher, 2009): one ranking from several."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import TypeVar

K = 60
"""The constant of RRF: ``score(d) = Σ 1 / (K + rank_i(d))``, ranks from 1."""

T = TypeVar("T", bound=Hashable)


def rrf(rankings: Sequence[Sequence[T]], k: int = K) -> list[tuple[T, float]]:
    """Fuse rankings (each best first) into ``(item, score)`` pairs, best first.

    An item missing from a ranking gets nothing from it. Ties keep the order in which the items
    were first seen (the first ranking's order first), so the result is deterministic."""
    if k < 0:
        raise ValueError(f"k must be 0 or more, got {k}")
    scores: dict[T, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + 1.0 / (k + rank)
    seen = {item: i for i, item in enumerate(scores)}
    return sorted(scores.items(), key=lambda pair: (-pair[1], seen[pair[0]]))


__all__ = ["K", "rrf"]
