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

from collections.abc import Collection, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from dagwright.errors import SecretNotSet
from dagwright.planner.references import Expression, expressions_in
from dagwright.planner.source import did_you_mean
from dagwright.redact import REDACTED

if TYPE_CHECKING:
    from dagwright.planner.schema import Workflow
    from dagwright.secret_values import SecretValues
    from dagwright.tools.registry import ToolRegistry

SECRETS = "secrets"
"""The root that reads a secret."""


class _AsRecorded(Mapping[str, str]):
    """Any name: ``[REDACTED]``."""

    def __getitem__(self, name: str) -> str:
        if not isinstance(name, str):
            raise KeyError(name)
        return REDACTED

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str)

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


AS_RECORDED: Mapping[str, str] = _AsRecorded()
"""Every secret as a recording holds it, ``[REDACTED]``: what ``secrets`` reads where recorded
inputs are compared without the values (a resume's or a fork's reuse check)."""


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


def reused_stand_ins(
    workflow: Workflow, secrets: SecretValues, reused: Collection[str]
) -> SecretValues:
    """``secrets``, and a stand-in for each secret not set that only ``reused`` steps read (a
    resume or a fork reuses their recorded outputs: they are not called, and need no value);
    for validation: the attempts of the steps that run read ``secrets`` alone."""
    running = {n for s in workflow.steps if s.id not in reused for n in secret_names_in(s.with_)}
    read = {n for s in workflow.steps if s.id in reused for n in secret_names_in(s.with_)}
    return secrets.with_stand_ins(read - running)


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
    "AS_RECORDED",
    "SECRETS",
    "replay_secrets",
    "reused_stand_ins",
    "secret_name",
    "secret_names_in",
    "secret_problems",
    "where_secrets_go",
]
