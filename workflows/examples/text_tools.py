"""User tools for the example workflows: a module named in a workflow's `tools:` list.

Any function decorated with `@tool` becomes a step a workflow can `uses:`; its typed parameters
are the arguments `dagwright validate` checks a step's `with:` against.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Annotated

from pydantic import BaseModel, Field

from dagwright.tools import tool

WORD = re.compile(r"[a-z][a-z0-9'-]*")


class WordCount(BaseModel):
    words: int
    sentences: int


class Keyword(BaseModel):
    word: str
    count: int


@tool("text.word_count")
def word_count(text: str) -> WordCount:
    """Count the words and sentences of a text."""
    sentences = [s for s in re.split(r"[.!?]+\s*", text) if s.strip()]
    return WordCount(words=len(WORD.findall(text.lower())), sentences=len(sentences))


@tool("text.keywords")
def keywords(
    texts: list[str],
    top: Annotated[int, Field(ge=1, le=50)] = 5,
    stopwords: list[str] | None = None,
) -> list[Keyword]:
    """The most frequent words across texts, ties broken alphabetically (deterministic)."""
    stop = {w.lower() for w in (stopwords or [])}
    counts = Counter(
        w for t in texts for w in WORD.findall(t.lower()) if w not in stop and len(w) > 2
    )
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    return [Keyword(word=w, count=c) for w, c in ranked]


@tool("text.format")
def format_digest(title: str, lines: list[str], bullet: str = "- ") -> str:
    """A plain-text digest: a title, then one bullet per line."""
    return "\n".join([title, "=" * len(title), *(bullet + line for line in lines)])
