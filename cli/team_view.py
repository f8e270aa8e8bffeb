"""What ``dagwright show`` and ``trace`` print of an ``agents.team`` step: each attempt's exchange,
message by message (``show``), and the words of its events' lines (``trace``). Called by
``cli.show``."""

from __future__ import annotations

import json
from typing import Any

from rich.markup import escape
from rich.table import Table

from dagwright.cli.common import _plural, out


def print_exchanges(events: list[Any]) -> None:
    """Each ``agents.team`` attempt's exchange, message by message: turn, agent, kind,
    tokens (prompt → completion), text (a long one clipped)."""
    from dagwright.executors.engine import events as ev

    exchanges: dict[tuple[str, int], list[dict[str, Any]]] = {}
    counts: dict[tuple[str, int, str], int] = {}
    for e in events:
        if e.step is None or e.attempt is None:
            continue
        if e.type == ev.AGENT_MESSAGE:
            exchanges.setdefault((e.step, e.attempt), []).append(e.data)
        elif e.type in (ev.MODEL_CALL, ev.TOOL_CALL) and e.data.get("agent") is not None:
            key = (e.step, e.attempt, e.type)
            counts[key] = counts.get(key, 0) + 1
    for (sid, attempt), said in exchanges.items():
        tokens = [m.get("tokens") or {} for m in said]
        prompt = sum(t.get("prompt", 0) for t in tokens)
        completion = sum(t.get("completion", 0) for t in tokens)
        turns = max((m.get("turn") or 0 for m in said), default=0)
        out.print(
            f"\n[bold]{escape(sid)}[/bold] attempt {attempt}: exchange of "
            f"{_plural(turns, 'turn')}, "
            f"{_plural(counts.get((sid, attempt, ev.MODEL_CALL), 0), 'model call')}, "
            f"{_plural(counts.get((sid, attempt, ev.TOOL_CALL), 0), 'tool call')}, "
            f"{prompt} → {completion} tokens"
        )
        table = Table(box=None, header_style="bold", padding=(0, 1))
        for col in ("turn", "agent", "kind", "tokens"):
            table.add_column(col, no_wrap=True)
        table.add_column("text", overflow="fold")
        for m in said:
            t = m.get("tokens")
            table.add_row(
                str(m.get("turn")),
                escape(str(m.get("agent"))),
                str(m.get("kind")),
                f"{t.get('prompt', 0)} → {t.get('completion', 0)}" if t else "",
                escape(_clipped(str(m.get("text", "")))),
            )
        out.print(table)


def _clipped(text: str, limit: int = 400) -> str:
    """A long message (a task carrying passages) as its start; the trace holds all of it."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text) - limit} more characters: dagwright trace --json)"


def team_bits(e: Any) -> list[str]:
    """An ``agents.team`` step's events: who said or called what, at which turn."""
    from dagwright.executors.engine import events as ev

    data, bits = e.data, []
    if e.type in (ev.MODEL_CALL, ev.TOOL_CALL) and data.get("agent") is not None:
        bits.append(f"agent {data['agent']} turn {data.get('turn')}")
    if e.type == ev.TOOL_CALL:
        args = json.dumps(data.get("arguments"), ensure_ascii=False)[:80]
        bits.append(f"{data.get('tool')}({args})")
        bits += [f"error: {str(data['error'])[:120]}"] if data.get("error") else []
    if e.type == ev.AGENT_MESSAGE:
        bits += [f"turn {data.get('turn')}", str(data.get("agent")), str(data.get("kind"))]
        bits.append(str(data.get("text", "")).replace("\n", " ")[:120])
    return bits


__all__ = ["print_exchanges", "team_bits"]
