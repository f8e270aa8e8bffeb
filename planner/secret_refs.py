"""``${{ secrets.NAME }}``: where a workflow may read a secret, and how.

- Only in a step's ``with``, inside an argument its tool declares secret-taking
  (``@tool(..., secret_args=("headers",))``); never in another argument, a verify check, the
  workflow's ``output`` or its concurrency key (``validate`` says where it may go instead).
- Only as a plain reference, ``${{ secrets.NAME }}``, alone or inside a longer string
  (``"Bearer ${{ secrets.API_TOKEN }}"``): an expression that computes on a secret
  (``secrets.X | lower``, ``secrets.X ~ inputs.y``) is refused, because what it produces is no
  longer the value that redaction looks for.
- Names are case-insensitive (``secrets.api_token`` is ``API_TOKEN``), and resolved at attempt
  time from the executor's secrets (``Settings.step_secrets()``).
- A replay needs a secret only where the tool that reads it is called again
  (``replay_secrets``).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from dagwright.errors import PlanIssue, SecretNotSet
from dagwright.planner.references import Expression, expressions_in
from dagwright.planner.source import Path_, Source, did_you_mean

if TYPE_CHECKING:
    from dagwright.planner.schema import Workflow
    from dagwright.secret_values import SecretValues
    from dagwright.tools.registry import ToolRegistry

SECRETS = "secrets"
"""The root that reads a secret."""


def secret_name(expr: Expression) -> str | None:
    """The upper-case NAME of ``${{ secrets.NAME }}``; None for any other expression."""
    if not expr.is_path or len(expr.refs) != 1:
        return None
    ref = expr.refs[0]
    if ref.root != SECRETS or len(ref.path) != 1 or not isinstance(ref.path[0], str):
        return None
    return ref.path[0].upper()


def secret_names_in(value: Any) -> Iterator[str]:
    """The names of the secrets a value (a step's ``with``) reads."""
    for _, expr in expressions_in(value):
        name = secret_name(expr)
        if name is not None:
            yield name


def secret_uses(workflow: Workflow) -> Iterator[tuple[Path_, str, str]]:
    """Where a workflow's steps read secrets: (YAML path, step id, field) of each."""
    for i, step in enumerate(workflow.steps):
        for loc, expr in expressions_in(step.with_):
            if SECRETS in expr.names():
                field = ".".join(["with", *map(str, loc)])
                yield ("steps", i, "with", *loc), step.id, field


def secrets_added(original: Workflow, revised: Workflow) -> list[PlanIssue]:
    """A plan revised by a model may keep the secret-reading steps the workflow had (same tool,
    same ``with``), never add or change one: it could send the secret anywhere."""
    kept = [(s.uses, s.with_) for s in original.steps]
    return [
        Source().issue(
            "a revised plan may not read secrets in a step the workflow did not have as it is",
            path,
            step=step_id,
            field=field,
            hint="only the steps of the workflow as written may read secrets",
        )
        for path, step_id, field in secret_uses(revised)
        if (revised.steps[int(path[1])].uses, revised.steps[int(path[1])].with_) not in kept
    ]


def replay_secrets(
    workflows: Iterable[Workflow],
    ran: Collection[str],
    registry: ToolRegistry,
    rerun: Collection[str],
    secrets: SecretValues,
) -> SecretValues:
    """The secrets a replay of a run of ``workflows`` (the plan, then its revisions) resolves:
    ``secrets``, and a ``[REDACTED]`` stand-in for each one not set here that only served
    steps read: they are not called, their recorded inputs hold ``[REDACTED]`` and compare
    equal. Raises SecretNotSet, naming the secret and where to set it, when a step of ``ran``
    (the steps with recorded attempts) reads one not set here and its tool runs again
    (``replay="rerun"``, or named in ``rerun``: ``--rerun TOOL``): it would be called with it."""
    stand_ins: list[str] = []
    for workflow in workflows:
        for step in workflow.steps:
            names = [n for n in secret_names_in(step.with_) if n not in secrets]
            tool = registry.get(step.uses) if names and step.uses in registry else None
            if (
                tool is not None
                and step.id in ran
                and (tool.replay == "rerun" or tool.name in rerun)
            ):
                how = (
                    f"or replay without --rerun {tool.name} to serve its recorded outcome"
                    if tool.replay == "serve"
                    else f'as tool {tool.name!r} runs again in every replay (replay="rerun")'
                )
                raise SecretNotSet(
                    f"step {step.id!r} reads secret {names[0]!r}, which is not set here, and "
                    f"its tool {tool.name!r} would be called with it: set "
                    f"DAGWRIGHT_SECRET_{names[0]} (or add {names[0]}=… to the "
                    f"DAGWRIGHT_SECRETS_FILE) where you replay, {how}"
                )
            stand_ins += names
    return secrets.with_stand_ins(stand_ins)


def where_secrets_go(tool_name: str | None, secret_args: Collection[str]) -> str:
    """The hint for a secret in the wrong place."""
    general = "secrets may appear only in a step's `with`, in an argument its tool declares "
    general += "secret-taking (@tool(..., secret_args=...))"
    if tool_name is None:
        return general
    if not secret_args:
        return f"{general}; tool {tool_name!r} takes no secrets"
    return f"{general}; tool {tool_name!r} takes them in: {', '.join(secret_args)}"


def secret_problems(
    expr: Expression, names: Collection[str] | None
) -> list[tuple[str, str | None]]:
    """What is wrong with an expression that reads ``secrets`` where secrets are allowed:
    it is not a plain ``secrets.NAME``, or (when the available ``names`` are known, upper-case)
    NAME is not set."""
    name = secret_name(expr)
    if name is None:
        return [
            (
                f"${{{{ {expr.source} }}}}: a secret can only be referenced as it is",
                "write ${{ secrets.NAME }} (alone, or inside a longer string); a value "
                "computed from a secret could not be redacted from the trace",
            )
        ]
    if names is not None and name not in names:
        close = did_you_mean(name, sorted(names))
        return [
            (
                f"secret {name!r} is not set",
                (close + " " if close else "")
                + f"set DAGWRIGHT_SECRET_{name}, or add {name}=… to the DAGWRIGHT_SECRETS_FILE",
            )
        ]
    return []


__all__ = [
    "SECRETS",
    "replay_secrets",
    "secret_name",
    "secret_names_in",
    "secret_problems",
    "secret_uses",
    "secrets_added",
    "where_secrets_go",
]
