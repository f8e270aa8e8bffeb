"""The tool registry: typed Python functions that steps may ``uses``.

A tool is a function whose parameters carry type annotations. The registry turns that signature
into a pydantic model: its JSON schema is what validation checks a step's ``with`` against (and
what the planner shows the model), and it validates the resolved arguments of every attempt.
Only registered tools can run: a workflow or a plan names tools, it never carries code.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import re
import sys
import threading
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, create_model
from pydantic_core import to_jsonable_python

from dagwright.errors import DagwrightError, ToolNotFound
from dagwright.tools._importing import import_allowed, imported_from

TOOL_NAME = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$")


@dataclass(frozen=True)
class ToolContext:
    """What a tool may know about the attempt it runs in (declare a ``ctx: ToolContext`` param)."""

    run_id: str
    step_id: str
    attempt: int
    previous_failure: str | None = None
    """Why the previous attempt of this step failed (its error or failed checks), if it did."""
    emit: Callable[[str, dict[str, Any]], None] | None = field(default=None, compare=False)
    """Report a fact to the run's trace (e.g. a ``model_call``), tied to this attempt."""
    cache: Any = field(default=None, compare=False)
    """The model-call cache, when the step has ``cache: true`` (``get(key)``/``put(key, value)``)."""
    replay: Any = field(default=None, compare=False)
    """In ``dagwright replay``: the attempt's recorded model calls, served instead of calling a
    provider (``tools.llm`` asks it; a tool that calls models must go through ``tools.llm``)."""
    tools: Any = field(default=None, compare=False)
    """The run's tool registry (the built-ins, DAGWRIGHT_TOOLS, the workflow's ``tools:``):
    where ``agents.team`` finds the tools its agents may call. None: the default registry."""


REPLAY_MODES = ("serve", "rerun")

ArgProblem = tuple[tuple[str | int, ...], str, str | None]
"""``(where under with, message, hint)``: what a tool's ``check`` finds wrong in a step's
arguments beyond their types."""
ArgsCheck = Callable[[dict[str, Any], "ToolRegistry"], list[ArgProblem]]


@dataclass(frozen=True)
class Requires:
    """Optional packages a tool needs (``@tool(..., requires=Requires(...))``): validation
    refuses a step that uses the tool while one is missing, with ``install`` as the fix."""

    modules: tuple[str, ...]
    """Importable names, e.g. ``("bm25s", "sentence_transformers")``."""
    install: str
    """The command that installs them, e.g. ``pip install 'dagwright[retrieval]'``."""
    extra: str | None = None
    """The optional extra of the package that brings them, e.g. ``retrieval`` (shown by
    ``dagwright tools``)."""

    def missing(self) -> list[str]:
        """The modules that cannot be found (found, not imported: validation stays cheap)."""
        found = []
        for module in self.modules:
            try:
                spec = importlib.util.find_spec(module)
            except (ImportError, ValueError):
                spec = None
            if spec is None:
                found.append(module)
        return found


@dataclass
class Tool:
    name: str
    fn: Callable[..., Any]
    args_model: type[BaseModel]
    description: str
    output_schema: dict[str, Any] | None = None
    is_async: bool = False
    context_param: str | None = None
    replay: str = "serve"
    """What ``dagwright replay`` does with this tool: ``serve`` its recorded outcome (the
    default: a tool may have side effects or call out), or ``rerun`` it (deterministic given its
    arguments and the model calls it makes, which replay serves) and check its output."""
    requires: Requires | None = None
    """Optional packages it needs, checked when a workflow using it is validated."""
    secret_args: tuple[str, ...] = ()
    """The arguments that may take ``${{ secrets.NAME }}`` (e.g. ``http.request``'s
    ``headers``); validation refuses a secret anywhere else."""
    check: ArgsCheck | None = None
    """Checks of a step's ``with`` beyond their types, run by validation with the run's
    registry (e.g. ``agents.team``: its agents' tools exist); values that are references are
    left to the attempt."""
    _output_adapter: TypeAdapter[Any] | None = field(default=None, repr=False)

    def args_schema(self) -> dict[str, Any]:
        return self.args_model.model_json_schema()

    def bind(self, args: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
        """Validate resolved arguments and return the keyword arguments to call ``fn`` with."""
        model = self.args_model.model_validate(args)
        kwargs = {
            info.alias or name: getattr(model, name)
            for name, info in type(model).model_fields.items()
        }
        kwargs.update(model.model_extra or {})
        if self.context_param:
            kwargs[self.context_param] = ctx
        return kwargs

    def to_json(self, value: Any) -> Any:
        """The tool's return value as plain JSON data, as the trace records it."""
        if self._output_adapter is not None:
            return self._output_adapter.dump_python(value, mode="json")
        return to_jsonable_python(value)


def _build_tool(
    fn: Callable[..., Any],
    name: str,
    description: str | None,
    replay: str = "serve",
    requires: Requires | None = None,
    secret_args: tuple[str, ...] = (),
    check: ArgsCheck | None = None,
) -> Tool:
    if replay not in REPLAY_MODES:
        raise DagwrightError(f"tool {name!r}: replay={replay!r}; use 'serve' or 'rerun'")
    if not TOOL_NAME.match(name):
        raise DagwrightError(
            f"tool name {name!r} is not valid: use lower-case words separated by dots, "
            "e.g. 'text.word_count'"
        )
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except NameError as exc:
        raise DagwrightError(
            f"tool {name!r}: cannot resolve the type hints of {fn.__qualname__}: {exc}; "
            "define the types it uses at module level"
        ) from None
    fields: dict[str, Any] = {}
    extra: Literal["forbid", "allow"] = "forbid"
    context_param = None
    for pname, param in inspect.signature(fn).parameters.items():
        annotation = hints.get(pname, Any)
        if annotation is ToolContext:
            context_param = pname
            continue
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            extra = "allow"
            continue
        if param.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.POSITIONAL_ONLY):
            raise DagwrightError(f"tool {name!r}: parameter {pname!r} must be passable by keyword")
        default = ... if param.default is inspect.Parameter.empty else param.default
        if hasattr(BaseModel, pname):  # e.g. `schema`: keep the argument's name as the alias
            fields[f"{pname}_"] = (annotation, Field(default, alias=pname))
        else:
            fields[pname] = (annotation, default)
    unknown = [a for a in secret_args if a not in fields and f"{a}_" not in fields]
    if unknown or isinstance(secret_args, str):
        raise DagwrightError(
            f"tool {name!r}: secret_args={secret_args!r} must be a tuple of its parameters' "
            f"names (it has: {', '.join(fields) or 'none'})"
        )
    model_name = "".join(part.title() for part in re.split(r"[._]", name)) + "Args"
    args_model = create_model(
        model_name, __config__=ConfigDict(extra=extra, populate_by_name=True), **fields
    )
    output_adapter = None
    output_schema = None
    ret = hints.get("return")
    if ret is not None and ret is not Any:
        output_adapter = TypeAdapter(ret)
        output_schema = output_adapter.json_schema()
    doc = description or inspect.getdoc(fn) or ""
    return Tool(
        name=name,
        fn=fn,
        args_model=args_model,
        description=doc.strip(),
        output_schema=output_schema,
        is_async=inspect.iscoroutinefunction(fn),
        context_param=context_param,
        replay=replay,
        requires=requires,
        secret_args=tuple(secret_args),
        check=check,
        _output_adapter=output_adapter,
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
            loading, _collect_stack[:] = list(_collect_stack), []  # built-ins are everyone's
            try:
                for module in self._pending:
                    importlib.import_module(module)
            finally:
                _collect_stack[:] = loading
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
        t = _build_tool(fn, name or fn.__name__, description, replay, requires, secret_args, check)
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
        if not MODULE_NAME.match(module):
            raise DagwrightError(
                f"{module!r} is not a module name: write a dotted name such as 'my_tools' "
                "(a .py file in the workflow's folder), never a path"
            )
        self._load_builtins()
        candidate = local_module_file(module, search_dir) if search_dir is not None else None
        if candidate is not None and importable and imported_from(module) == candidate:
            candidate = None  # the settings loaded this very file already (DAGWRIGHT_TOOLS)
        if candidate is None and not importable:
            where = f" in {search_dir}" if search_dir is not None else ""
            raise DagwrightError(
                f"no {module.replace('.', '/')}.py{where}, and {module!r} is not a module the "
                "settings allow to import by name (DAGWRIGHT_TOOLS)"
            )
        with _collecting_into(self):
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
            else:
                imported = import_allowed(module)
                # imported before: its decorators ran then, into the registry loading it
                for t in _module_tools.get(imported.__name__, {}).values():
                    self._tools.setdefault(t.name, t)


MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
"""What a workflow's ``tools:`` entry may be: a dotted module name, never a path."""


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


_builtins_lock = threading.RLock()
_collect_stack: list[ToolRegistry] = []
"""The registries loading a module of user tools right now (``load_module``)."""
_module_tools: dict[str, dict[str, Tool]] = {}
"""Every ``@tool`` function seen, by module: a module imported once gives its tools to every
registry that loads it later."""


class _collecting_into:
    """While a user module is imported, ``@tool`` registers into the loading registry too."""

    def __init__(self, registry: ToolRegistry) -> None:
        self.registry = registry

    def __enter__(self) -> None:
        _collect_stack.append(self.registry)

    def __exit__(self, *exc: object) -> None:
        _collect_stack.pop()


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
        targets = _collect_stack[-1:] or [default_registry]
        for registry in targets:
            t = registry.register(fn, name=name, description=description, replay=replay,
                                  requires=requires, secret_args=secret_args, check=check)  # fmt: skip
            _module_tools.setdefault(fn.__module__, {})[t.name] = t
        return fn

    return decorate


__all__ = ["Requires", "Tool", "ToolContext", "ToolRegistry", "default_registry", "tool"]
