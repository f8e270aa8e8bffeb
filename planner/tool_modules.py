"""The tools a workflow runs with: the base registry, the settings' tool modules
(``DAGWRIGHT_TOOLS``) and the workflow's own ``tools:`` (a ``.py`` file or package inside its
folder, or a module of ``DAGWRIGHT_TOOLS``), each loaded into a registry of the workflow's own.
Nothing else is ever imported: a path, a file whose real path leaves the folder, or an
importable module the settings do not list is a located issue."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dagwright.errors import DagwrightError, PlanError, PlanIssue
from dagwright.planner.schema import Workflow
from dagwright.planner.source import Source
from dagwright.tools.registry import Tool, ToolRegistry

if TYPE_CHECKING:
    from dagwright.planner.loader import LoadedWorkflow


def load_tool_modules(
    registry: ToolRegistry, modules: Sequence[str]
) -> tuple[ToolRegistry, list[PlanIssue]]:
    """``registry`` with the settings' tool ``modules`` loaded (into a copy, when there are
    any), and a located issue for each module that cannot load."""
    loaded, issues, _ = _settings_modules(registry, modules)
    return loaded, issues


def _settings_modules(
    registry: ToolRegistry, modules: Sequence[str]
) -> tuple[ToolRegistry, list[PlanIssue], dict[str, str]]:
    """``load_tool_modules``, and the module that registered each new tool."""
    if not modules:
        return registry, [], {}
    loaded = registry.copy()
    issues: list[PlanIssue] = []
    origins: dict[str, str] = {}
    for module in modules:
        before = set(loaded.names())
        try:
            loaded.load_module(module)
        except (ImportError, DagwrightError, SyntaxError) as exc:
            issues.append(
                PlanIssue(
                    f"cannot load tool module {module!r} from settings: "
                    f"{type(exc).__name__}: {exc}",
                    file="environment",
                    field="DAGWRIGHT_TOOLS",
                    hint="DAGWRIGHT_TOOLS names modules (my_tools for ./my_tools.py), "
                    "comma-separated",
                )
            )
        origins.update(dict.fromkeys(set(loaded.names()) - before, module))
    return loaded, issues, origins


def registry_for(
    workflow: Workflow,
    registry: ToolRegistry,
    base_dir: Path | None,
    source: Source,
    allowed: Sequence[str] = (),
) -> tuple[ToolRegistry, list[PlanIssue]]:
    """The registry a workflow runs with: ``registry`` plus the modules its ``tools:`` names.

    Each entry is a dotted module name: a ``.py`` file (or package) inside ``base_dir``, the
    workflow's folder (its real path too), or one of the ``allowed`` modules (the settings'
    ``DAGWRIGHT_TOOLS``). A workflow without a folder (``base_dir`` None: given as text) may
    use registered tools only. Anything else is a located issue, and nothing is imported."""
    loaded, issues, _ = _workflow_modules(workflow, registry, base_dir, source, allowed)
    return loaded, issues


def _workflow_modules(
    workflow: Workflow,
    registry: ToolRegistry,
    base_dir: Path | None,
    source: Source,
    allowed: Sequence[str],
) -> tuple[ToolRegistry, list[PlanIssue], dict[str, str]]:
    """``registry_for``, and the module that registered each new tool."""
    if not workflow.tools:
        return registry, [], {}
    loaded = registry.copy()
    issues = []
    origins: dict[str, str] = {}
    for i, module in enumerate(workflow.tools):
        if base_dir is None:
            issues.append(
                source.issue(
                    f"tool module {module!r}: a workflow given without a file may use "
                    "registered tools only",
                    ("tools", i),
                    field="tools",
                    hint="remove `tools:`; ask the operator to add the module to DAGWRIGHT_TOOLS",
                )
            )
            continue
        before = set(loaded.names())
        try:
            loaded.load_module(module, base_dir, importable=module in allowed)
        except (ImportError, DagwrightError, SyntaxError) as exc:
            issues.append(
                source.issue(
                    f"cannot load tool module {module!r}: {_reason(exc)}",
                    ("tools", i),
                    field="tools",
                    hint="name a .py file in the workflow's folder (my_tools for my_tools.py), "
                    "or a module listed in DAGWRIGHT_TOOLS",
                )
            )
        origins.update(dict.fromkeys(set(loaded.names()) - before, module))
    return loaded, issues, origins


@dataclass(frozen=True)
class Listed:
    """A tool, and where it comes from: ``builtin``, ``DAGWRIGHT_TOOLS:<module>`` or
    ``workflow:<module>``."""

    tool: Tool
    source: str

    def as_dict(self) -> dict[str, Any]:
        """What ``dagwright tools --json`` and ``GET /v1/tools`` give for it: its name,
        description, arguments' and output's JSON Schemas, source, ``secret_args`` (the
        arguments that may take ``${{ secrets.NAME }}``) and ``requires`` (None, or the
        optional packages it needs: ``extra``, ``modules``, those ``missing`` here and the
        ``install`` command)."""
        t = self.tool
        requires = None
        if t.requires is not None:
            requires = {
                "extra": t.requires.extra,
                "modules": list(t.requires.modules),
                "missing": t.requires.missing(),
                "install": t.requires.install,
            }
        return {
            "name": t.name,
            "description": t.description,
            "arguments": t.args_schema(),
            "output": t.output_schema,
            "source": self.source,
            "secret_args": list(t.secret_args),
            "requires": requires,
        }


def listed_tools(
    registry: ToolRegistry,
    modules: Sequence[str],
    loaded: LoadedWorkflow | None = None,
) -> tuple[list[Listed], list[PlanIssue]]:
    """What ``dagwright tools`` lists: ``registry``'s tools, the settings' ``modules``' and,
    given a ``loaded`` workflow, its ``tools:`` modules' (loaded as a run loads them:
    ``registry_for``), by name, each with its source; and the issues of the modules that
    cannot load."""
    registry, issues, settings = _settings_modules(registry, modules)
    origins = {name: f"DAGWRIGHT_TOOLS:{module}" for name, module in settings.items()}
    if loaded is not None:
        base_dir = loaded.base_dir
        registry, more, own = _workflow_modules(
            loaded.workflow, registry, base_dir, loaded.source, modules
        )
        issues += more
        origins.update({name: f"workflow:{module}" for name, module in own.items()})
    return [Listed(t, origins.get(t.name, "builtin")) for t in registry], issues


def _reason(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, DagwrightError) else f"{type(exc).__name__}: {exc}"


def registry_for_run(
    workflow: Workflow,
    registry: ToolRegistry,
    modules: Sequence[str] = (),
    source: str | None = None,
) -> ToolRegistry:
    """The registry a recorded run executes with: ``registry``, the settings' tool ``modules``
    and the workflow's ``tools:`` (found in the folder of ``source``, the workflow's file, under
    ``registry_for``'s rules: a run whose ``tools:`` breaks them is refused, not loaded). Raises
    PlanError when a module cannot load."""
    registry, issues = load_tool_modules(registry, modules)
    base_dir = Path(source).resolve().parent if source else None
    registry, more = registry_for(workflow, registry, base_dir, Source(source), modules)
    if issues or more:
        raise PlanError(issues + more)
    return registry


__all__ = ["Listed", "listed_tools", "load_tool_modules", "registry_for", "registry_for_run"]
