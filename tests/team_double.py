"""TEST DOUBLE: the answers of a writer and a critic, served by the local OpenAI-compatible
server (``openai_stub.OpenAIStub(respond=WriterCritic())``). It is not a model: it reads who
is asking (the system message) and where the exchange is (the messages), and answers as a
writer and a critic would, so that tests drive a real AutoGen team through dagwright's real
provider stack (openai client, HTTP).

The writer's system message starts "You answer", the critic's "You check" (as in
workflows/examples/critique.yaml).

- the writer drafts an answer without a citation; once the critic has asked for one, it
  answers again citing the task's passage about the warranty (``[doc_id#chunk]``);
- the critic first counts the draft's words with the ``text.word_count`` tool, then, seeing
  the count, says APPROVED if the draft cites a passage, else asks for a citation.
"""

from __future__ import annotations

import importlib.util
import json
import os
from typing import Any

import pytest
from openai_stub import text_reply, tool_reply

DRAFT = "The battery warranty lasts ten years."
ASK = "Cite the passage you used as [doc_id#chunk]."
EXCHANGE = [  # (turn, agent, kind) of each message, as the double makes the team talk
    (0, "user", "task"),
    (1, "writer", "text"),
    (2, "critic", "tool_call"),
    (2, "critic", "tool_result"),
    (2, "critic", "text"),
    (3, "writer", "text"),
    (4, "critic", "tool_call"),
    (4, "critic", "tool_result"),
    (4, "critic", "text"),
]


def require(*modules: str) -> None:
    """Skip without the extras on a laptop; fail in CI, which installs them."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if not missing:
        return
    message = f"not installed: {', '.join(missing)}"
    if os.environ.get("CI") == "true":
        pytest.fail(message + ": CI installs the agents and retrieval extras (make test)")
    pytest.skip(message + ": pip install -e '.[agents,retrieval]'")


def _system(body: dict[str, Any]) -> str:
    first = body["messages"][0]
    return str(first["content"]) if first["role"] == "system" else ""


def _first_passage(messages: list[dict[str, Any]]) -> str:
    """``[doc_id#chunk]`` of the task's passage (``Passages (JSON): [...]``) about the warranty
    (else the first)."""
    _, _, tail = str(messages[1]["content"]).partition("Passages (JSON): ")
    try:
        passages, _ = json.JSONDecoder().raw_decode(tail)
        best = next((p for p in passages if "warranty" in p["doc_id"]), passages[0])
        return f"[{best['doc_id']}#{best['chunk']}]"
    except (ValueError, LookupError, TypeError):
        return "[passage#0]"


class WriterCritic:
    """``respond(body)`` for ``OpenAIStub``; ``asked`` counts the requests of each agent."""

    def __init__(self) -> None:
        self.asked: dict[str, int] = {"writer": 0, "critic": 0, "other": 0}

    def __call__(self, body: dict[str, Any]) -> dict[str, Any]:
        system = _system(body).lower()
        messages = body["messages"]
        if system.startswith("you check"):
            self.asked["critic"] += 1
            return self.critic(messages)
        if system.startswith("you answer"):
            self.asked["writer"] += 1
            return self.writer(messages)
        self.asked["other"] += 1
        return text_reply("(no script for this request)")

    def writer(self, messages: list[dict[str, Any]]) -> dict[str, Any]:
        asked_to_cite = any(
            m["role"] == "user" and str(m["content"]).startswith("critic:") for m in messages
        )
        if not asked_to_cite:
            return text_reply(DRAFT)
        return text_reply(f"The battery warranty lasts ten years {_first_passage(messages)}.")

    def critic(self, messages: list[dict[str, Any]]) -> dict[str, Any]:
        drafts = [
            str(m["content"]).removeprefix("writer: ")
            for m in messages
            if m["role"] == "user" and str(m["content"]).startswith("writer:")
        ]
        draft = drafts[-1] if drafts else ""
        if messages[-1]["role"] != "tool":
            return tool_reply("text-word_count", {"text": draft})
        return text_reply("APPROVED" if "[" in draft else ASK)
