"""What a tool is: ``Tool`` (a function, the pydantic model of its arguments, its output
schema), the ``ToolContext`` it may ask for, the optional packages it ``Requires``, and
``build_tool``, which makes a ``Tool`` of a typed Python function.

Used by the registry (``tools.registry``: ``register`` builds each tool here), which
re-exports these names; validation and the runner read the ``Tool`` they hold.
"""

from __future__ import annotations

import importlib.util
import inspect
import re
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, create_model
from pydantic_core import to_jsonable_python

from dagwright.errors import DagwrightError

if TYPE_CHECKING:
    from dagwright.tools.registry import ToolRegistry

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
    settings: Any = field(default=None, compare=False)
    """The driver's ``dagwright.settings.Settings``, read once at its edge (the CLI with its
    ``--db``, a Celery worker, the API server): the default model, the trace store (where
    ``retrieve`` finds indexes), limits. Read it with ``dagwright.settings.tool_settings(ctx)``,
    which falls back to the environment's for a tool called outside a driver."""


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


def build_tool(
    fn: Callable[..., Any],
    name: str,
    description: str | None,
    replay: str = "serve",
    requires: Requires | None = None,
    secret_args: tuple[str, ...] = (),
    check: ArgsCheck | None = None,
) -> Tool:
    """The tool ``fn`` is: its typed parameters become the arguments model (a ``ctx:
    ToolContext`` parameter, or ``ToolContext | None``, is left out, a ``**kwargs`` allows extra arguments), its return
    annotation the output schema. Raises DagwrightError naming the tool when it cannot be one."""
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
        if _is_context(annotation):
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


def _is_context(annotation: Any) -> bool:
    """``ToolContext``, or ``ToolContext | None`` (a tool that may also be called directly)."""
    if annotation is ToolContext:
        return True
    args = typing.get_args(annotation)
    return bool(args) and ToolContext in args and set(args) <= {ToolContext, type(None)}


__all__ = [
    "REPLAY_MODES",
    "TOOL_NAME",
    "ArgProblem",
    "ArgsCheck",
    "Requires",
    "Tool",
    "ToolContext",
    "build_tool",
]
