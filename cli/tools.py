"""``dagwright tools``: the registered tools and their arguments."""

from __future__ import annotations

from rich.markup import escape

from dagwright.cli.common import JsonOption, _json, _settings, out


def tools_cmd(as_json: JsonOption = False) -> None:
    """List the registered tools and their arguments (the built-ins and DAGWRIGHT_TOOLS)."""
    from dagwright.cli.plan import _registry_with

    tools = list(_registry_with(_settings()))
    if as_json:
        _json(
            [
                {
                    "name": t.name,
                    "description": t.description,
                    "arguments": t.args_schema(),
                    "output": t.output_schema,
                }
                for t in tools
            ]
        )
        return
    for t in tools:
        props = t.args_schema().get("properties", {})
        required = set(t.args_schema().get("required", []))
        args = (
            ", ".join(
                f"{n}{'' if n in required else '?'}: {p.get('type', 'any')}"
                for n, p in props.items()
            )
            or "any arguments"
        )
        out.print(
            f"[bold]{t.name}[/bold]({escape(args)})  {escape(t.description.splitlines()[0] if t.description else '')}"
        )


__all__ = ["tools_cmd"]
