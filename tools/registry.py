"""The tool registry: typed Python functions that steps may ``uses``.

A tool is a function whose parameters carry type annotations. The registry turns that signature
into a pydantic model: its JSON schema is what validation checks a step's ``with`` against (and
what the planner shows the model), and it validates the resolved arguments of every attempt.
Only registered tools can run: a workflow or a plan names tools, it never carries code.

Here: ``ToolRegistry`` (name → tool), ``default_registry`` and the ``@tool`` decorator. Its
parts: ``tools.definition`` (``Tool``, ``ToolContext``, ``Requires``: what a tool is, built
from a function; re-exported here) and ``tools.user_modules`` (loading a module of user tools,
and which registry its ``@tool`` functions register into).
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from dagwright.errors import DagwrightError, ToolNotFound
from dagwright.tools.definition import ArgProblem as ArgProblem
from dagwright.tools.definition import ArgsCheck as ArgsCheck
from dagwright.tools.definition import Requires, Tool, ToolContext, build_tool
from dagwright.tools.user_modules import (
    check_module_name,
    collecting,
    import_user_module,
    module_tools,
)


class ToolRegistry:
    """Name → tool. ``copy()`` gives an isolated registry (tests, one workflow's user tools).

    ``builtins``: modules whose ``@tool`` functions register here on first use (the default
    registry's built-ins load when a tool is first looked up, not when the package is
    imported: validation and the pure engine never load them)."""

    def __init__(
        self, tools: dict[str, Tool] | None = None, *, builtins: tuple[str, ...] = ()
    ) -> None:
        self._tools: dict[str, Tool] = dict(tools or {})
        self._pending = builtins
        self._loading = False
        self.version = 0
        """Counts registrations: what was checked against this registry holds while it is
        unchanged (``planner.prepare`` keeps validations by it)."""

    def _load_builtins(self) -> None:
        """Import the built-in modules once; other threads wait until they are registered
        (a threads-pool worker's first tasks look tools up at once)."""
        if not self._pending:
            return
        with _builtins_lock:
            if not self._pending or self._loading:  # done meanwhile, or our own import's call
                return
            self._loading = True
            loading, collecting[:] = list(collecting), []  # built-ins are everyone's
            try:
                for module in self._pending:
                    importlib.import_module(module)
            finally:
                collecting[:] = loading
                self._pending, self._loading = (), False

    def register(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        replay: str = "serve",
        requires: Requires | None = None,
        secret_args: tuple[str, ...] = (),
        check: ArgsCheck | None = None,
    ) -> Tool:
        self._load_builtins()
        t = build_tool(fn, name or fn.__name__, description, replay, requires, secret_args, check)
        existing = self._tools.get(t.name)
        if existing is not None and existing.fn is not fn:
            same_source = getattr(existing.fn, "__module__", None) == getattr(
                fn, "__module__", None
            ) and getattr(existing.fn, "__qualname__", None) == getattr(fn, "__qualname__", None)
            if not same_source:
                raise DagwrightError(
                    f"tool {t.name!r} is already registered by "
                    f"{existing.fn.__module__}.{existing.fn.__qualname__}; pick another name"
                )
        self._tools[t.name] = t
        self.version += 1
        return t

    def tool(
        self,
        name: str | None = None,
        *,
        description: str | None = None,
        replay: str = "serve",
        requires: Requires | None = None,
        secret_args: tuple[str, ...] = (),
        check: ArgsCheck | None = None,
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
            self.register(fn, name=name, description=description, replay=replay,
                          requires=requires, secret_args=secret_args, check=check)  # fmt: skip
            return fn

        return decorate

    def get(self, name: str) -> Tool:
        self._load_builtins()
        try:
            return self._tools[name]
        except KeyError:
            raise ToolNotFound(f"no tool named {name!r} is registered") from None

    def __contains__(self, name: object) -> bool:
        self._load_builtins()
        return name in self._tools

    def __iter__(self) -> Iterator[Tool]:
        self._load_builtins()
        return iter(sorted(self._tools.values(), key=lambda t: t.name))

    def names(self) -> list[str]:
        self._load_builtins()
        return sorted(self._tools)

    def copy(self) -> ToolRegistry:
        self._load_builtins()
        return ToolRegistry(self._tools)

    def load_module(
        self, module: str, search_dir: Path | None = None, *, importable: bool = True
    ) -> None:
        """Import a module of user tools; its ``@tool`` functions register into this registry.

        ``module`` is a dotted module name (``a.b``, never a path): the ``.py`` file (or package)
        of that name inside ``search_dir`` (the workflow file's folder), whose real path must stay
        inside it (symlinks are resolved); else, when ``importable``, the module of that name
        importable from ``sys.path`` or, failing that, found in the current directory
        (``import_allowed``). Raises DagwrightError, importing nothing, when the name is
        not a module name, the file leaves the folder, or the module is not allowed.
        """
        check_module_name(module)
        self._load_builtins()
        for t in import_user_module(self, module, search_dir, importable=importable):
            if t.name not in self._tools:  # a module imported before: its tools join this registry
                self._tools[t.name] = t
                self.version += 1


_builtins_lock = threading.RLock()

BUILTIN_TOOL_MODULES = (
    "dagwright.tools.builtin",
    "dagwright.tools.llm",
    "dagwright.tools.http",
    "dagwright.tools.retrieve",  # registers without its optional extra (Requires)
    "dagwright.tools.team",  # agents.team: registers without its optional extra (Requires)
)
default_registry = ToolRegistry(builtins=BUILTIN_TOOL_MODULES)
"""Every registered tool: the built-ins (echo, sleep, flaky, llm.generate, http.request,
retrieve, agents.team; loaded on first use) and every ``@tool`` function imported since."""


def tool(
    name: str | None = None,
    *,
    description: str | None = None,
    replay: str = "serve",
    requires: Requires | None = None,
    secret_args: tuple[str, ...] = (),
    check: ArgsCheck | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a function as a tool::

        @tool("text.word_count")
        def word_count(text: str, top: int = 5) -> dict[str, int]: ...

    The function registers into the registry that is loading its module (a workflow's
    ``tools:``, ``DAGWRIGHT_TOOLS``: ``ToolRegistry.load_module``), or, when its module is
    imported directly, into the default registry. One workflow's tools never appear in another
    workflow's registry, nor in the default one.

    ``replay``: what ``dagwright replay`` does with it. ``"serve"`` (the default, safe for
    tools with side effects) serves the recorded outcome and checks the arguments;
    ``"rerun"`` (for deterministic tools) runs it again and checks its output.

    ``requires``: optional packages the tool needs (``Requires``); a workflow that uses it while
    one is missing fails validation with the install command.

    ``secret_args``: the parameters that may take ``${{ secrets.NAME }}`` (e.g.
    ``("headers",)``); a secret in any other argument fails validation.

    ``check``: ``check(with_, registry) -> [(where, message, hint)]``, what validation finds
    wrong in a step's arguments beyond their types (each a located problem).
    """

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        targets = collecting[-1:] or [default_registry]
        for registry in targets:
            t = registry.register(fn, name=name, description=description, replay=replay,
                                  requires=requires, secret_args=secret_args, check=check)  # fmt: skip
            module_tools.setdefault(fn.__module__, {})[t.name] = t
        return fn

    return decorate


__all__ = ["Requires", "Tool", "ToolContext", "ToolRegistry", "default_registry", "tool"]
