"""Where a workflow came from: its file, and the YAML line of each key and list item."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

from dagwright.errors import PlanIssue

Path_ = tuple[str | int, ...]


@dataclass
class Source:
    file: str | None = None
    lines: dict[Path_, int] = field(default_factory=dict)

    def line(self, path: Path_) -> int | None:
        """The line of ``path``, or of its nearest enclosing key that has one."""
        for end in range(len(path), -1, -1):
            found = self.lines.get(path[:end])
            if found is not None:
                return found
        return None

    def issue(
        self,
        message: str,
        path: Path_ = (),
        *,
        step: str | None = None,
        field: str | None = None,
        hint: str | None = None,
    ) -> PlanIssue:
        return PlanIssue(
            message, file=self.file, line=self.line(path), step=step, field=field, hint=hint
        )


def did_you_mean(word: str, choices: list[str]) -> str | None:
    """A hint naming the closest of ``choices`` to ``word``, if one is close."""
    close = difflib.get_close_matches(word, choices, n=1)
    return f"did you mean {close[0]!r}?" if close else None


__all__ = ["Path_", "Source", "did_you_mean"]
