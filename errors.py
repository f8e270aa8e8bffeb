"""One root error and a shallow tree.

Every message names where the problem is (file, line, step, field) and what to do about it.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class DagwrightError(Exception):
    """Root of every error dagwright raises on purpose."""


@dataclass
class PlanIssue:
    """One problem found in a workflow or plan before anything runs."""

    message: str
    file: str | None = None
    line: int | None = None
    step: str | None = None
    field: str | None = None
    hint: str | None = None

    def location(self) -> str:
        where = self.file or "<workflow>"
        if self.line is not None:
            where += f":{self.line}"
        parts = [where]
        if self.step:
            parts.append(f"step '{self.step}'")
        if self.field:
            parts.append(f"field '{self.field}'")
        return ", ".join(parts)

    def __str__(self) -> str:
        text = f"{self.location()}: {self.message}"
        if self.hint:
            text += f" ({self.hint})"
        return text

    def as_dict(self) -> dict[str, object]:
        return {
            "file": self.file,
            "line": self.line,
            "step": self.step,
            "field": self.field,
            "message": self.message,
            "hint": self.hint,
        }


@dataclass
class PlanError(DagwrightError):
    """A workflow, a plan or a run's inputs are invalid. Carries every issue found, not just the first."""

    issues: list[PlanIssue] = field(default_factory=list)
    partial: object = field(default=None, repr=False, compare=False)
    """The parts of the workflow that did parse (a ``Workflow``), for further checks."""
    source: object = field(default=None, repr=False, compare=False)
    """Where the workflow came from (a ``planner.source.Source``), when it came from a file."""

    def __post_init__(self) -> None:
        super().__init__(str(self))

    def __str__(self) -> str:
        n = len(self.issues)
        head = f"{n} problem{'s' if n != 1 else ''} in the workflow"
        return head + ":\n" + "\n".join(f"  - {issue}" for issue in self.issues)


class StepError(DagwrightError):
    """Raised by a tool to fail the current attempt.

    ``retryable=False`` tells the retry policy not to try again (like Temporal's
    ``non_retryable``): use it for errors a retry cannot fix, such as bad credentials.
    ``kind`` is the error kind a step's ``retry_on`` must list for a retry: ``error`` (the
    default), ``timeout``, or ``non_idempotent`` (retrying could repeat a side effect, e.g. a
    POST that may have reached the server: retried only where ``retry_on`` lists it).
    """

    def __init__(self, message: str, *, retryable: bool = True, kind: str = "error") -> None:
        super().__init__(message)
        self.retryable = retryable
        self.kind = kind


class StepTimeout(StepError):
    """An attempt ran past its step's ``timeout``."""


class VerificationFailed(StepError):
    """A step's output failed one of its ``verify`` checks."""

    def __init__(self, message: str, *, failures: list[str]) -> None:
        super().__init__(message, retryable=True)
        self.failures = failures


class ToolNotFound(DagwrightError):
    """A step names a tool that is not registered."""


class RunNotFound(DagwrightError):
    """No run in the trace store has this id (or this id prefix)."""


class StoreError(DagwrightError):
    """The trace store could not be reached or written."""


class StaleState(StoreError):
    """An append conditioned on the run's last event (``expect_seq``) found that another writer
    appended since: nothing was written; read the trace again and decide again."""


class ReplayMismatch(DagwrightError):
    """A replayed step did not reproduce its recorded output."""


class SecretNotSet(DagwrightError):
    """A secret (``${{ secrets.NAME }}``) that must be used here is not set here
    (``DAGWRIGHT_SECRET_<NAME>``, ``DAGWRIGHT_SECRETS_FILE``): e.g. a replay that runs again a
    tool that reads it."""


__all__ = [
    "DagwrightError",
    "PlanError",
    "PlanIssue",
    "ReplayMismatch",
    "RunNotFound",
    "SecretNotSet",
    "StepError",
    "StepTimeout",
    "StaleState",
    "StoreError",
    "ToolNotFound",
    "VerificationFailed",
]
