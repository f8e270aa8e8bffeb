"""Where indexes live, and how one is written and read back whole.

Indexes live in ``DAGWRIGHT_INDEX_DIR``, else in ``indexes/`` beside the SQLite trace store
(``.dagwright/indexes`` for the default ``.dagwright/trace.db``; also for a PostgreSQL store,
which has no folder: set ``DAGWRIGHT_INDEX_DIR`` where workers share one). An index ``NAME`` is
the folder ``NAME/`` there::

    NAME/CURRENT            the generation in use (one line)
    NAME/g…/manifest.json   model, chunking, each file's content hash and chunk count
    NAME/g…/chunks.json     the chunks: doc_id, chunk, start, end, text
    NAME/g…/embeddings.npy  one unit vector per chunk (float32), in the same order
    NAME/g…/bm25/           the BM25 index (bm25s)

A build writes a new generation, then switches ``CURRENT`` to it (an atomic rename) and removes
the older ones: a reader sees one whole generation, the old or the new.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from dagwright.errors import DagwrightError

FORMAT = 1
"""The layout version in every manifest."""
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
DEFAULT_ROOT = Path(".dagwright") / "indexes"


class IndexNotFound(DagwrightError):
    """No index of that name in the index folder."""


def index_root(db: str, index_dir: str = "") -> Path:
    """The folder of indexes for a trace store ``db`` (DAGWRIGHT_DB) and DAGWRIGHT_INDEX_DIR."""
    if index_dir:
        return Path(index_dir).expanduser()
    if db == "memory":
        return DEFAULT_ROOT
    if "://" not in db:
        return Path(db).expanduser().parent / "indexes"
    if db.startswith("sqlite:///"):
        path = unquote(db.removeprefix("sqlite:///").partition("?")[0])
        return Path(path).expanduser().parent / "indexes" if path else DEFAULT_ROOT
    return DEFAULT_ROOT


def check_name(name: str) -> str:
    if not NAME.match(name) or ".." in name:
        raise DagwrightError(
            f"index name {name!r} is not valid: use letters, digits, '_', '-' and '.' "
            "(at most 100, starting with a letter or digit), e.g. 'handbook'"
        )
    return name


def index_path(root: Path, name: str) -> Path:
    return root / check_name(name)


def current_generation(folder: Path) -> Path | None:
    """The generation in use of the index at ``folder``, or None when there is none."""
    try:
        generation = (folder / "CURRENT").read_text(encoding="utf-8").strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    if not generation.startswith("g") or "/" in generation or "\\" in generation:
        raise DagwrightError(f"{folder / 'CURRENT'} is damaged: build the index again")
    return folder / generation


def require_index(root: Path, name: str) -> Path:
    """The generation in use of index ``name``, or IndexNotFound naming the fix."""
    generation = current_generation(index_path(root, name))
    if generation is None:
        known = ", ".join(m["name"] for m in list_indexes(root)) or "none"
        raise IndexNotFound(
            f"no index named {name!r} in {root} (indexes there: {known}); build it with "
            f"`dagwright index build DIR --name {name}`, or see `dagwright index list`"
        )
    return generation


def new_generation(folder: Path) -> Path:
    """A fresh, empty generation folder of the index at ``folder``."""
    generation = folder / f"g{secrets.token_hex(6)}"
    generation.mkdir(parents=True)
    return generation


def publish(folder: Path, generation: Path) -> None:
    """Make ``generation`` the one in use, then remove the older ones."""
    tmp = folder / f".CURRENT.{os.getpid()}.{secrets.token_hex(3)}"
    tmp.write_text(generation.name + "\n", encoding="utf-8")
    os.replace(tmp, folder / "CURRENT")
    for old in folder.iterdir():
        if old.is_dir() and old.name.startswith("g") and old != generation:
            shutil.rmtree(old, ignore_errors=True)


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, ensure_ascii=False, separators=(",", ":")), encoding="utf-8")


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DagwrightError(f"cannot read {path}: {exc}; build the index again") from None


def read_manifest(generation: Path) -> dict[str, Any]:
    manifest = read_json(generation / "manifest.json")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DagwrightError(
            f"{generation} holds an index of another format: build it again "
            "(`dagwright index build DIR --name NAME`)"
        )
    return manifest


def list_indexes(root: Path) -> list[dict[str, Any]]:
    """The manifest of every index under ``root`` (with its ``path``), by name."""
    if not root.is_dir():
        return []
    found = []
    for folder in sorted(root.iterdir()):
        if not NAME.match(folder.name):
            continue
        try:
            generation = current_generation(folder)
            if generation is None:
                continue
            manifest = read_manifest(generation)
        except DagwrightError:
            continue
        found.append({**manifest, "name": folder.name, "path": str(folder)})
    return found


__all__ = [
    "FORMAT",
    "IndexNotFound",
    "check_name",
    "current_generation",
    "index_path",
    "index_root",
    "list_indexes",
    "new_generation",
    "publish",
    "read_json",
    "read_manifest",
    "require_index",
    "write_json",
]
