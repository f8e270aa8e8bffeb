"""Modules of user tools (a workflow's ``tools:``, ``DAGWRIGHT_TOOLS``): where such a module
is (``local_module_file``: inside the workflow's folder, symlinks resolved; else imported by
name, ``tools._importing``), importing it, and which registry its ``@tool`` functions register
into while it is imported (``collecting``; ``module_tools`` keeps what each module registered,
for a registry that loads it later).

Called by ``ToolRegistry.load_module`` and the ``@tool`` decorator (``tools.registry``); the
planner's side, a workflow's registry with its modules loaded, is ``planner.tool_modules``.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from dagwright.errors import DagwrightError
from dagwright.tools._importing import import_allowed, imported_from
from dagwright.tools.definition import Tool

if TYPE_CHECKING:
    from dagwright.tools.registry import ToolRegistry

MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
"""What a workflow's ``tools:`` entry may be: a dotted module name, never a path."""

collecting: list[ToolRegistry] = []
"""The registries loading a module of user tools right now (``import_user_module``)."""
module_tools: dict[str, dict[str, Tool]] = {}
"""Every ``@tool`` function seen, by module: a module imported once gives its tools to every
registry that loads it later."""


def check_module_name(module: str) -> None:
    """Raise DagwrightError unless ``module`` is a dotted module name (a workflow's ``tools:``
    entry is never a path)."""
    if not MODULE_NAME.match(module):
        raise DagwrightError(
            f"{module!r} is not a module name: write a dotted name such as 'my_tools' "
            "(a .py file in the workflow's folder), never a path"
        )


def import_user_module(
    registry: ToolRegistry, module: str, search_dir: Path | None, *, importable: bool
) -> list[Tool]:
    """Import ``module`` for ``registry`` (``ToolRegistry.load_module``, which says where it is
    looked for): its ``@tool`` functions register into ``registry`` as they run. Returns the
    tools of a module imported before (its decorators ran then, into the registry loading it),
    for ``registry`` to take those it lacks."""
    candidate = local_module_file(module, search_dir) if search_dir is not None else None
    if candidate is not None and importable and imported_from(module) == candidate:
        candidate = None  # the settings loaded this very file already (DAGWRIGHT_TOOLS)
    if candidate is None and not importable:
        where = f" in {search_dir}" if search_dir is not None else ""
        raise DagwrightError(
            f"no {module.replace('.', '/')}.py{where}, and {module!r} is not a module the "
            "settings allow to import by name (DAGWRIGHT_TOOLS)"
        )
    with _collecting_into(registry):
        if candidate is not None:
            spec = importlib.util.spec_from_file_location(
                f"dagwright_user_tools.{module}",
                candidate,
                submodule_search_locations=[str(candidate.parent)]
                if candidate.name == "__init__.py"
                else None,
            )
            assert spec is not None and spec.loader is not None
            mod = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = mod
            spec.loader.exec_module(mod)
            return []
        imported = import_allowed(module)
        return list(module_tools.get(imported.__name__, {}).values())


def local_module_file(module: str, folder: Path) -> Path | None:
    """The file of dotted ``module`` inside ``folder`` (``a/b.py``, or a package's
    ``a/b/__init__.py``), or None when there is none. Raises DagwrightError when it exists but
    its real path (symlinks resolved) is not strictly inside ``folder``'s."""
    root = folder.resolve()
    base = folder.joinpath(*module.split("."))
    for candidate in (base.with_name(base.name + ".py"), base / "__init__.py"):
        if not candidate.exists() and not candidate.is_symlink():
            continue
        real = candidate.resolve()
        if real == root or not real.is_relative_to(root):
            raise DagwrightError(
                f"{candidate} leaves the workflow's folder (it resolves to {real}); "
                "a workflow loads tool modules from its own folder only"
            )
        if real.is_file():
            return real
    return None


class _collecting_into:
    """While a user module is imported, ``@tool`` registers into the loading registry too."""

    def __init__(self, registry: ToolRegistry) -> None:
        self.registry = registry

    def __enter__(self) -> None:
        collecting.append(self.registry)

    def __exit__(self, *exc: object) -> None:
        collecting.pop()


__all__ = [
    "MODULE_NAME",
    "check_module_name",
    "collecting",
    "import_user_module",
    "local_module_file",
    "module_tools",
]
