"""Documents into overlapping chunks, each keeping its document id and character offsets.

A document is a plain-text or Markdown file of a folder; its id is its path relative to the
folder, with ``/`` separators (``guides/setup.md``). A chunk is ``text[start:end]`` of its
document, exactly: windows of at most ``size`` characters that end at a paragraph break, else a
line break, else a sentence's end, else a space (whichever comes last in the window's second
half), and start ``overlap`` characters before the previous one ended, at a word's start.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dagwright.errors import DagwrightError

TEXT_SUFFIXES = (".md", ".markdown", ".txt", ".text", ".rst")
"""The files ``dagwright index build`` reads; others in the folder are left out."""
CHUNK_SIZE = 600
"""Characters per chunk, at most (all-MiniLM-L6-v2 reads 256 word pieces, ~1000 characters)."""
CHUNK_OVERLAP = 120
"""Characters a chunk repeats from the end of the one before it."""
MAX_FILE_BYTES = 8 << 20
"""A file bigger than this (8 MiB) is left out of an index, and said so."""

_BREAKS = ("\n\n", "\n", ". ", "? ", "! ", "; ", " ")


@dataclass(frozen=True)
class Chunk:
    """``text`` is ``document[start:end]``; ``chunk`` its number in the document, from 0."""

    doc_id: str
    chunk: int
    start: int
    end: int
    text: str

    @property
    def key(self) -> str:
        """How answers cite it: ``doc_id#chunk``."""
        return f"{self.doc_id}#{self.chunk}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def spans(text: str, size: int = CHUNK_SIZE, overlap: int = CHUNK_OVERLAP) -> list[tuple[int, int]]:
    """The ``(start, end)`` of each chunk of ``text``, without leading or trailing whitespace."""
    if size < 20:
        raise DagwrightError(f"chunk size {size} is too small: use 20 characters or more")
    if not 0 <= overlap < size // 2:
        raise DagwrightError(
            f"chunk overlap {overlap} must be at least 0 and less than half the size ({size})"
        )
    found: list[tuple[int, int]] = []
    start = _skip_space(text, 0)
    while start < len(text):
        end = _cut(text, start, size)
        trimmed = len(text[start:end].rstrip())
        if trimmed:
            found.append((start, start + trimmed))
        if end >= len(text):
            break
        nxt = _word_start(text, max(end - overlap, start + 1), end)
        start = _skip_space(text, nxt)
    return found


def _cut(text: str, start: int, size: int) -> int:
    """Where the window starting at ``start`` ends: the last break in its second half."""
    limit = start + size
    if limit >= len(text):
        return len(text)
    half = start + size // 2
    for brk in _BREAKS:
        at = text.rfind(brk, half, limit)
        if at != -1:
            return at + len(brk)
    return limit  # one long word: cut it


def _word_start(text: str, at: int, end: int) -> int:
    """The start of the first word at or after ``at`` (before ``end``; else ``at``)."""
    if at == 0 or text[at - 1].isspace():
        return at
    space = next((i for i in range(at, end) if text[i].isspace()), None)
    return at if space is None else space


def _skip_space(text: str, at: int) -> int:
    while at < len(text) and text[at].isspace():
        at += 1
    return at


def chunk_document(
    doc_id: str, text: str, size: int = CHUNK_SIZE, overlap: int = CHUNK_OVERLAP
) -> list[Chunk]:
    return [
        Chunk(doc_id, i, start, end, text[start:end])
        for i, (start, end) in enumerate(spans(text, size, overlap))
    ]


@dataclass(frozen=True)
class Document:
    doc_id: str
    text: str
    sha256: str

    @property
    def title(self) -> str:
        """The first Markdown heading in its first lines, else its file name in words."""
        for line in self.text.lstrip().splitlines()[:5]:
            if line.startswith("#"):
                return line.lstrip("#").strip()[:200]
        stem = self.doc_id.rsplit("/", 1)[-1].rsplit(".", 1)[0]
        return " ".join(re.split(r"[-_ ]+", stem)).strip()


def in_context(title: str, chunk: Chunk) -> str:
    """What is embedded and BM25-indexed for a chunk: its document's title, then the chunk (a
    chunk from the middle of a page often does not say what the page is about)."""
    return (
        f"{title}\n{chunk.text}"
        if title and not chunk.text.startswith(f"# {title}")
        else chunk.text
    )


def read_folder(folder: Path) -> tuple[list[Document], list[str]]:
    """The text documents under ``folder`` (sorted by id), and the files left out, each with
    why. Hidden files and folders are skipped; symlinks are not followed out of the folder."""
    if not folder.is_dir():
        raise DagwrightError(f"{folder} is not a folder: give the folder of documents to index")
    root = folder.resolve()
    docs: list[Document] = []
    skipped: list[str] = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or path.is_dir():
            continue
        if path.suffix.lower() not in TEXT_SUFFIXES:
            continue
        doc_id = rel.as_posix()
        real = path.resolve()
        if not real.is_relative_to(root) or not real.is_file():
            skipped.append(f"{doc_id} (a link out of the folder)")
            continue
        data = real.read_bytes()
        if len(data) > MAX_FILE_BYTES:
            skipped.append(f"{doc_id} (bigger than {MAX_FILE_BYTES >> 20} MiB)")
            continue
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            skipped.append(f"{doc_id} (not UTF-8 text: byte {exc.start})")
            continue
        docs.append(Document(doc_id, text, hashlib.sha256(data).hexdigest()))
    return docs, skipped


__all__ = [
    "CHUNK_OVERLAP",
    "CHUNK_SIZE",
    "TEXT_SUFFIXES",
    "Chunk",
    "Document",
    "chunk_document",
    "in_context",
    "read_folder",
    "spans",
]
