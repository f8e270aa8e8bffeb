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
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from typing import TYPE_CHECKING, Any

from dagwright.errors import PlanIssue
from dagwright.planner.references import Expression, expressions_in
from dagwright.planner.source import Path_, Source, did_you_mean

if TYPE_CHECKING:
    from dagwright.planner.schema import Workflow

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
    "secret_name",
    "secret_names_in",
    "secret_problems",
    "secret_uses",
    "secrets_added",
    "where_secrets_go",
]
