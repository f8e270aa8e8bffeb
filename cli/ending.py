"""What the command line says when a run ends (``run``, ``resume``, ``fork``, ``follow``,
``submit --wait``, ``status``): its status in words, its error, its output, and what to do
next, which depends on how it ended."""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.text import Text

from dagwright.cli.common import (
    EXIT_INVALID,
    _db_flag,
    _die,
    _error_text,
    _plural,
    _secs,
    _status_text,
    out,
)

Json = dict[str, Any]

OUTPUT_MODES = ("auto", "raw", "json")

OutputModeOption = Annotated[
    str,
    typer.Option(
        "--output",
        help="How to print the run's output: raw (a string as text, anything else as JSON), "
        "json (always JSON, a string quoted), auto (raw for a string on a terminal, else json).",
        show_default=True,
    ),
]
OutputFileOption = Annotated[
    Path | None,
    typer.Option(
        "--output-file",
        "-o",
        help="Write the run's output to this file (a string as text, anything else as JSON; "
        "--output json: always JSON) instead of printing it.",
        show_default=False,
    ),
]


@dataclass(frozen=True)
class Output:
    """Where and how a run's output goes (``--output``, ``-o``)."""

    mode: str = "auto"
    file: Path | None = None

    @classmethod
    def chosen(cls, mode: str, file: Path | None) -> Output:
        if mode not in OUTPUT_MODES:
            _die(f"--output {mode!r}: use {', '.join(OUTPUT_MODES[:-1])} or json", EXIT_INVALID)
        return cls(mode, file)

    def text(self, value: Any, *, terminal: bool) -> tuple[str, bool]:
        """The output as text, and whether that text is JSON."""
        raw = self.mode == "raw" or (self.mode == "auto" and terminal)
        if isinstance(value, str) and raw:
            return value, False
        return json.dumps(value, indent=2, ensure_ascii=False, default=str), True

    def write(self, value: Any) -> str:
        """Write the output to ``file``; what to say about it."""
        assert self.file is not None
        text, is_json = self.text(value, terminal=True)  # a file is for reading: raw text
        data = (text + "\n" if is_json else text).encode("utf-8")
        try:
            self.file.write_bytes(data)
        except OSError as exc:
            return f"[red]not written[/red] to {escape(str(self.file))}: {escape(str(exc))}"
        kind = "JSON" if is_json else "text"
        return f"written to {escape(str(self.file))} ({_plural(len(data), 'byte')}, {kind})"


def status_words(summary: Json) -> str:
    """``succeeded``, or ``succeeded with 1 failed optional step (notify)``, or the status."""
    status = str(summary.get("status"))
    failed = summary.get("failed_optional") or []
    if status == "succeeded" and failed:
        names = ", ".join(str(f.get("step")) for f in failed)
        return f"succeeded with {_plural(len(failed), 'failed optional step')} ({names})"
    return status


def print_head(summary: Json) -> None:
    """``run ID  STATUS  in 0.64s``, the run's error and its optional steps' errors."""
    words = status_words(summary)
    text = Text("\nrun ")
    text.append(str(summary["run_id"]), style="bold")
    text.append("  ")
    text.append_text(_status_text(str(summary["status"])))
    text.append(words[len(str(summary["status"])) :], style="yellow")
    if summary.get("duration") is not None:
        text.append(f"  in {_secs(summary['duration'])}")
    out.print(text, highlight=False)
    if summary.get("error"):
        out.print(f"[red]error:[/red] {escape(_error_text(summary['error']))}", highlight=False)
    for failed in summary.get("failed_optional") or []:
        message = escape(_error_text({"message": failed.get("message")}))
        out.print(f"[yellow]failed optional step[/yellow] {escape(str(failed.get('step')))}: "
                  f"{message}", highlight=False)  # fmt: skip


def print_output(value: Any, output: Output) -> None:
    """The run's output: to ``output.file``, or printed (a string as text on a terminal)."""
    if output.file is not None:
        out.print(f"output: {output.write(value)}", highlight=False)
        return
    text, is_json = output.text(value, terminal=out.is_terminal)
    out.print("output:")
    if is_json:
        out.print_json(text)
    else:  # as it is (its own last newline is the line's end)
        out.print(text.removesuffix("\n"), markup=False, highlight=False, emoji=False)


def print_end(
    summary: Json, db: str | None, *, source: str | None = None, output: Output | None = None
) -> None:
    """The whole end of a run, for people: status, errors, output, the trace, what next.
    ``source``: the workflow file the run's plan is (None: a plan of a model's, or revised)."""
    print_head(summary)
    output = output or Output()
    if summary["status"] == "succeeded":
        print_output(summary.get("output"), output)
    elif output.file is not None:
        out.print(f"output: none written to {escape(str(output.file))}: the run did not succeed")
    if summary.get("trace"):
        out.print(f"trace: {escape(str(summary['trace']))}", highlight=False)
    for line in next_steps(summary, db, source):
        out.print(escape(line), highlight=False)


def next_steps(summary: Json, db: str | None, source: str | None = None) -> list[str]:
    """The commands that fit how the run ended: inspect and replay it; resume a failed run
    after fixing its workflow (the file it came from, or its plan written out), or as it is
    when what failed was outside it; resume a cancelled or abandoned run as it is."""
    run_id, status = summary["run_id"], summary["status"]
    flag = _db_flag(db)
    if (summary.get("lineage") or {}).get("mode") == "fork":
        source = None  # its plan is the parent's, edited: not the file's
    lines = [f"inspect: dagwright show {run_id}{flag}", f"replay: dagwright replay {run_id}{flag}"]
    if status == "failed":
        if source:
            shown = _shown_path(source)
            lines.append(
                f"fix {shown}, then go on: dagwright resume {run_id} --workflow {shown}{flag}"
            )
        else:
            lines.append(
                f"fix its plan: dagwright show {run_id} --workflow{flag} > plan.yaml, edit it, "
                f"then go on: dagwright resume {run_id} --workflow plan.yaml{flag}"
            )
        lines.append(f"or, once what it called works again: dagwright resume {run_id}{flag}")
    elif status in ("cancelled", "abandoned"):
        lines.append(f"go on where it stopped: dagwright resume {run_id}{flag}")
    return lines


def _shown_path(source: str) -> str:
    """A workflow's path as the user would type it: relative to here when it is below."""
    try:
        relative = os.path.relpath(source)
    except ValueError:  # another drive (Windows)
        relative = source
    return shlex.quote(source if relative.startswith("..") else relative)


__all__ = [
    "OUTPUT_MODES",
    "Output",
    "OutputFileOption",
    "OutputModeOption",
    "next_steps",
    "print_end",
    "print_head",
    "print_output",
    "status_words",
]
