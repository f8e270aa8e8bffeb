"""Hybrid retrieval over a folder of text: the ``retrieve`` tool and ``dagwright index``.

Chunks with overlap (``chunking``), BM25 (bm25s) and dense embeddings (sentence-transformers,
``embedding``) fused by reciprocal rank fusion (``fusion``), persisted under the trace store's
folder (``store``), built incrementally and searched (``index``). Importing this package loads
none of numpy, bm25s, torch or sentence-transformers: they load on the first build or search,
from the optional extra ``pip install 'dagwright[retrieval]'``.
"""

from dagwright.retrieval.chunking import Chunk, chunk_document, read_folder, spans
from dagwright.retrieval.embedding import DEFAULT_MODEL, INSTALL, MissingExtra, load_embedder
from dagwright.retrieval.fusion import rrf
from dagwright.retrieval.index import MODES, BuildReport, Index, build_index, open_index, search
from dagwright.retrieval.store import IndexNotFound, index_root, list_indexes

__all__ = [
    # documents and chunks
    "Chunk",
    "chunk_document",
    "read_folder",
    "spans",
    # indexes
    "BuildReport",
    "Index",
    "IndexNotFound",
    "build_index",
    "index_root",
    "list_indexes",
    "open_index",
    # search
    "DEFAULT_MODEL",
    "MODES",
    "rrf",
    "search",
    "load_embedder",
    # the optional extra
    "INSTALL",
    "MissingExtra",
]
