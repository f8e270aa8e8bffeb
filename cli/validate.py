"""``dagwright validate``: check a workflow without running anything."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from dagwright.cli import common
from dagwright.cli.common import InputOption, JsonOption, _invalid, _json, _prepare, out
from dagwright.errors import PlanError


def validate_cmd(
    file: Annotated[Path, typer.Argument(help="The workflow YAML file.")],
    inputs: InputOption = None,
    as_json: JsonOption = False,
) -> None:
    """Check a workflow without running anything. Exit 0 when valid, 2 with every problem listed.

    Run inputs are checked too when any --input is given."""
    try:
        wf, registry, _ = _prepare(file, inputs, inputs_required=bool(inputs))
    except PlanError as exc:
        _invalid(exc, as_json, valid=False)
    common.EXIT_AT_ONCE = True  # the parsed file is kept (prepare's cache) until the end
    if as_json:
        _json({"valid": True, "errors": [], "steps": len(wf.steps)})
        return
    needs = [f"{n} ({s.type})" for n, s in wf.inputs.items() if s.required]
    out.print(
        f"[green]✓[/green] {escape(str(file))} is valid: {len(wf.steps)} steps"
        + (f"; a run needs --input for: {', '.join(needs)}" if needs and not inputs else "")
    )


__all__ = ["validate_cmd"]
