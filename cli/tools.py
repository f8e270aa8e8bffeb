"""``dagwright tools [WORKFLOW]``: the tools steps can use, their arguments and outputs."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from dagwright.cli.common import JsonOption, _invalid, _json, _settings, err, out
from dagwright.errors import PlanError

if TYPE_CHECKING:
    from dagwright.planner.loader import LoadedWorkflow
    from dagwright.planner.tool_modules import Listed
    from dagwright.tools.registry import Requires


def tools_cmd(
    workflow: Annotated[
        Path | None,
        typer.Argument(
            help="A workflow file: list the tools its `tools:` modules register too.",
            show_default=False,
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """List the tools steps can use, with their arguments and outputs: the built-ins, the
    modules of DAGWRIGHT_TOOLS and, given a WORKFLOW file, the modules its `tools:` names.

    Modules load as a run loads them: a DAGWRIGHT_TOOLS name from the Python path or the
    current directory; a workflow's entry from its folder (or DAGWRIGHT_TOOLS). Loading a
    module runs its code, which is how its @tool functions register: with WORKFLOW, its own
    tool modules are imported, as `validate` and `run` import them; without it, none of any
    workflow is. Exit 2, with the problems located, when a module cannot load.

    Each tool shows the arguments that may take ${{ secrets.NAME }}, and the optional packages
    it needs (the retrieval extra for retrieve), with the install command when they are missing.

    --json: a list of {name, description, arguments, output, source, secret_args, requires},
    with the full JSON schemas; source is builtin, DAGWRIGHT_TOOLS:<module> or
    workflow:<module>; requires is null or {extra, modules, missing, install}."""
    from dagwright.planner.tool_modules import listed_tools
    from dagwright.tools import default_registry

    settings = _settings()
    loaded, others = _loaded(workflow, settings.limits(), as_json) if workflow else (None, 0)
    listed, issues = listed_tools(default_registry, settings.tools, loaded)
    if issues:
        _invalid(PlanError(issues), as_json)
    if as_json:
        _json([item.as_dict() for item in listed])
    else:
        _print(listed, workflow)
    if others:
        err.print(
            f"[yellow]note:[/yellow] {escape(str(workflow))} has {others} other problem"
            f"{'s' if others != 1 else ''}: `dagwright validate {escape(str(workflow))}` "
            f"lists {'them' if others != 1 else 'it'}"
        )


def _loaded(path: Path, limits: Any, as_json: bool) -> tuple[LoadedWorkflow, int]:
    """The workflow at ``path``, and how many problems it has besides its ``tools:``; a file
    that does not parse, or whose ``tools:`` does not, is refused (exit 2)."""
    from dagwright.planner.loader import LoadedWorkflow, load_workflow
    from dagwright.planner.schema import Workflow
    from dagwright.planner.source import Source

    try:
        return load_workflow(path, limits), 0
    except PlanError as exc:
        own = [i for i in exc.issues if (i.field or "").split(".")[0].split("[")[0] == "tools"]
        if own or not isinstance(exc.partial, Workflow) or not isinstance(exc.source, Source):
            _invalid(PlanError(own or exc.issues), as_json)
        base_dir = path.resolve().parent
        return LoadedWorkflow(exc.partial, exc.source, base_dir), len(exc.issues)


def _print(listed: list[Listed], workflow: Path | None) -> None:
    groups: dict[str, list[Listed]] = {}
    for item in listed:
        groups.setdefault(item.source, []).append(item)
    for source in sorted(groups, key=_group_order):
        kind, _, module = source.partition(":")
        heading = {"builtin": "built-in", "DAGWRIGHT_TOOLS": f"DAGWRIGHT_TOOLS: {module}"}.get(
            kind, f"workflow {workflow}: {module}"
        )
        out.print(f"[dim]{escape(heading)}[/dim]")
        for item in groups[source]:
            t = item.tool
            summary = t.description.splitlines()[0] if t.description else ""
            out.print(f"  [bold]{escape(t.name)}[/bold]  {escape(summary)}")
            out.print(f"    with:    {escape(_arguments(t.args_schema()) or '(nothing)')}")
            out.print(f"    returns: {escape(_type(t.output_schema))}")
            if t.secret_args:
                takes = ", ".join(t.secret_args)
                out.print(f"    secrets: {escape(takes)} (may take ${{{{ secrets.NAME }}}})")
            if t.requires is not None:
                out.print(f"    needs:   {escape(_needs(t.requires))}")
    out.print("[dim]`dagwright tools --json` prints the full argument and output schemas.[/dim]")


def _needs(requires: Requires) -> str:
    """``the retrieval extra (bm25s, …): installed``, or what is missing and the command."""
    what = f"the {requires.extra} extra" if requires.extra else "optional packages"
    what += f" ({', '.join(requires.modules)})"
    missing = requires.missing()
    if not missing:
        return f"{what}: installed"
    return f"{what}: not installed here (missing {', '.join(missing)}): {requires.install}"


def _group_order(source: str) -> tuple[int, str]:
    kind = source.partition(":")[0]
    return ({"builtin": 0, "DAGWRIGHT_TOOLS": 1}.get(kind, 2), source)


def _arguments(schema: Mapping[str, Any]) -> str:
    defs = schema.get("$defs", {})
    props = schema.get("properties", {})
    required = set(schema.get("required", []))
    shown = [
        f"{name}{'' if name in required else '?'}: {_type(p, defs)}" for name, p in props.items()
    ]
    if schema.get("additionalProperties") is True:
        shown.append("any others" if shown else "any arguments")
    return ", ".join(shown)


def _type(
    schema: Mapping[str, Any] | None, defs: Mapping[str, Any] | None = None, depth: int = 0
) -> str:
    """A JSON schema in a line: ``string``, ``list[integer]``, ``{words: integer, note?: string}``,
    ``'a' | 'b'``; ``any`` for none."""
    if not schema:
        return "any"
    defs = {**(defs or {}), **schema.get("$defs", {})}
    ref = schema.get("$ref")
    if isinstance(ref, str):
        name = ref.rsplit("/", 1)[-1]
        return _type(defs.get(name), defs, depth) if name in defs else name
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return " | ".join(dict.fromkeys(_type(s, defs, depth) for s in schema[key]))
    if len(schema.get("allOf", [])) == 1:
        return _type(schema["allOf"][0], defs, depth)
    if "enum" in schema:
        return " | ".join(repr(v) for v in schema["enum"][:6]) + (
            " | …" if len(schema["enum"]) > 6 else ""
        )
    if "const" in schema:
        return repr(schema["const"])
    kind = schema.get("type")
    if isinstance(kind, list):
        return " | ".join(_type({**schema, "type": k}, defs, depth) for k in kind)
    if kind == "array":
        return f"list[{_type(schema.get('items'), defs, depth + 1)}]"
    if kind == "object" or "properties" in schema:
        return _object(schema, defs, depth)
    return str(kind) if kind else "any"


def _object(schema: Mapping[str, Any], defs: Mapping[str, Any], depth: int) -> str:
    props = schema.get("properties") or {}
    extra = schema.get("additionalProperties")
    if props and depth < 2:
        required = set(schema.get("required", []))
        fields = [
            f"{n}{'' if n in required else '?'}: {_type(p, defs, depth + 1)}"
            for n, p in props.items()
        ]
        return "{" + ", ".join(fields) + "}"
    if isinstance(extra, Mapping) and extra and not props:
        return f"dict[string, {_type(extra, defs, depth + 1)}]"
    return str(schema.get("title") or "object") if props else "object"


__all__ = ["tools_cmd"]
