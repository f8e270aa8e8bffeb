"""Text into BM25 terms, keeping what makes BM25 worth having: names, ids and acronyms.

Lower-cased words; a word joined by ``-``, ``.``, ``/`` or ``_`` to others (``E-231``,
``KS10A-22060001``, ``4.3.0``) also counts whole, without its separators (``e231``), so an id
matches itself before it matches its parts. English stop words (bm25s's longer list) are left
out; a plural ``-s`` is taken off words of five letters or more (``refunds`` → ``refund``).
"""

from __future__ import annotations

import functools
import re

VERSION = "dagwright-terms-1"
"""Recorded in each index: an index built with other terms is built again whole."""
_WORDS = re.compile(r"\w+(?:[-./_]\w+)*")
_PARTS = re.compile(r"[^\W_]+")


@functools.cache
def _stopwords() -> frozenset[str]:
    from dagwright.retrieval.embedding import require

    words: tuple[str, ...] = require("bm25s.stopwords").STOPWORDS_EN_PLUS
    return frozenset(words)


def _stem(word: str) -> str:
    if len(word) < 5 or not word.isalpha() or word.endswith(("ss", "us", "is")):
        return word
    if word.endswith("ies"):
        return word[:-3] + "y"
    if word.endswith("s"):
        return word[:-1]
    return word


def terms(text: str) -> list[str]:
    """The BM25 terms of ``text``, in order (a compound's whole form before its parts)."""
    stop = _stopwords()
    found: list[str] = []
    for match in _WORDS.finditer(text.lower()):
        parts = _PARTS.findall(match.group())
        if len(parts) > 1:
            found.append("".join(parts))
        found += [_stem(p) for p in parts if p not in stop and (len(p) > 1 or p.isdigit())]
    return found


__all__ = ["VERSION", "terms"]
