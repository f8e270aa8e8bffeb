"""Whether a reference's path into a step's output can exist, from the tool's declared output
JSON schema: ``steps.s.output.slept`` → "output has no field 'slept' (fields: slept_ms)"."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dagwright.planner.source import did_you_mean


def resolve_ref(schema: Mapping[str, Any], root: Mapping[str, Any]) -> Mapping[str, Any]:
    """``schema`` with its local ``$ref``s followed (to a depth of 32)."""
    seen = 0
    while "$ref" in schema and seen < 32:
        ref = str(schema["$ref"])
        if not ref.startswith("#/"):
            return {}
        node: Any = root
        for part in ref[2:].split("/"):
            node = node.get(part, {}) if isinstance(node, Mapping) else {}
        schema, seen = node, seen + 1
    return schema


def path_problem(schema: Mapping[str, Any] | None, path: tuple[Any, ...]) -> str | None:
    """Why ``path`` cannot exist in values of ``schema`` (None when it may exist)."""
    if not schema:
        return None
    root, node = schema, schema
    walked = "output"
    for part in path:
        node = resolve_ref(node, root)
        if any(k in node for k in ("anyOf", "oneOf", "allOf")) or not node:
            return None  # unions: don't guess
        kind = node.get("type")
        if kind == "object" or "properties" in node:
            props = node.get("properties", {})
            extra = node.get("additionalProperties", "properties" not in node)
            if part in props:
                node = props[part]
            elif extra:
                node = extra if isinstance(extra, Mapping) else {}
            else:
                hint = did_you_mean(str(part), list(props))
                return f"{walked} has no field {part!r} (fields: {', '.join(props) or 'none'})" + (
                    f"; {hint}" if hint else ""
                )
        elif kind == "array":
            if not isinstance(part, int):
                return f"{walked} is a list: index it with [n], not .{part}"
            node = node.get("items", {})
        elif kind in ("string", "integer", "number", "boolean", "null"):
            return f"{walked} is {'an' if kind == 'integer' else 'a'} {kind}; it has no {part!r}"
        else:
            return None
        walked += f"[{part}]" if isinstance(part, int) else f".{part}"
    return None


__all__ = ["path_problem", "resolve_ref"]
