"""YAML workflows → ``Workflow``, with line numbers for every error (an edge: it imports yaml).

Reading the YAML document itself (bounded, located) is ``planner.yaml_doc``."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from dagwright.errors import PlanError, PlanIssue
from dagwright.planner.limits import Limits
from dagwright.planner.schema import Check, InputSpec, RetryPolicy, Step, Workflow
from dagwright.planner.source import Path_, Source
from dagwright.planner.yaml_doc import parse_yaml

_MODELS_BY_DEPTH: dict[tuple[str | None, ...], type[BaseModel]] = {
    (): Workflow,
    ("steps", None): Step,
    ("steps", None, "retry"): RetryPolicy,
    ("steps", None, "verify", None): Check,
    ("inputs", None): InputSpec,
}


def _model_at(loc: Path_) -> type[BaseModel] | None:
    shape = tuple(
        None if isinstance(p, int) or (i == 1 and loc[0] == "inputs") else p
        for i, p in enumerate(loc)
    )
    return _MODELS_BY_DEPTH.get(shape)


def _keys(model: type[BaseModel]) -> list[str]:
    return [f.alias or name for name, f in model.model_fields.items()]


def _step_of(data: Any, loc: Path_) -> tuple[str | None, str | None]:
    """(step id, field path within the step) for a location under ``steps``."""
    if len(loc) >= 2 and loc[0] == "steps" and isinstance(loc[1], int):
        step_id = None
        steps = data.get("steps") if isinstance(data, Mapping) else None
        if isinstance(steps, list) and loc[1] < len(steps) and isinstance(steps[loc[1]], Mapping):
            raw = steps[loc[1]].get("id")
            step_id = str(raw) if raw is not None else f"#{loc[1] + 1}"
        rest = ".".join(str(p) for p in loc[2:]) or None
        return step_id, rest
    return None, ".".join(str(p) for p in loc) or None


def issues_from_validation(exc: ValidationError, data: Any, source: Source) -> list[PlanIssue]:
    issues = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        loc = tuple(
            "with" if p == "with_" else ("schema" if p == "json_schema" else p) for p in loc
        )
        step, fld = _step_of(data, loc)
        hint = None
        if err["type"] == "extra_forbidden":
            parent = _model_at(loc[:-1])
            allowed = _keys(parent) if parent else []
            close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            message = f"unknown key {loc[-1]!r}"
            hint = (f"did you mean {close[0]!r}? " if close else "") + (
                f"allowed here: {', '.join(allowed)}" if allowed else ""
            )
        elif err["type"] == "missing":
            message = f"missing required key {loc[-1]!r}"
        else:
            message = err["msg"].removeprefix("Value error, ")
            if "input" in err and err["type"] not in ("model_type", "dict_type"):
                message += f" (got {err['input']!r})"
        issues.append(source.issue(message, loc, step=step, field=fld, hint=hint or None))
    return issues


def workflow_from_data(data: Any, source: Source | None = None) -> Workflow:
    source = source or Source()
    if not isinstance(data, Mapping):
        raise PlanError(
            [
                source.issue(
                    "a workflow must be a mapping with at least 'name' and 'steps'",
                    hint="see workflows/examples/ for the shape",
                )
            ]
        )
    try:
        return Workflow.model_validate(data)
    except ValidationError as exc:
        error = PlanError(issues_from_validation(exc, data, source))
        error.partial = _salvage(data)
        error.source = source
        raise error from None


def _salvage(data: Mapping[str, Any]) -> Workflow | None:
    """The parts of an invalid workflow that do parse, so the semantic checks (tools, references,
    cycles) can still report their problems in the same pass. None when nothing can be kept."""
    raw_steps = data.get("steps")
    if not isinstance(raw_steps, list):
        return None
    steps = []
    for raw in raw_steps:
        if not isinstance(raw, Mapping):
            continue
        try:
            steps.append(Step.model_validate(raw))
            continue
        except ValidationError:
            pass
        salvaged = _salvage_step(raw)
        if salvaged is not None:
            steps.append(salvaged)
    inputs = {}
    for name, spec in (
        (data.get("inputs") or {}).items() if isinstance(data.get("inputs"), Mapping) else []
    ):
        try:
            inputs[name] = InputSpec.model_validate(
                {"type": spec} if isinstance(spec, str) else spec
            )
        except ValidationError:
            inputs[name] = InputSpec()
    tools = data.get("tools")
    tools = [t for t in tools if isinstance(t, str)] if isinstance(tools, list) else []
    try:
        return Workflow.model_construct(
            name=str(data.get("name") or "?"),
            inputs=inputs,
            tools=tools,
            steps=steps,
            output=data.get("output"),
        )
    except Exception:  # noqa: BLE001 - salvage is best effort
        return None


def _salvage_step(raw: Mapping[str, Any]) -> Step | None:
    """An invalid step with the keys that are invalid on their own left out (its checks one by
    one), or None when even its id, tool and arguments don't parse."""
    core = {k: raw[k] for k in ("id", "uses", "with", "needs") if k in raw}
    try:
        Step.model_validate(core)
    except ValidationError:
        return None
    for key, value in raw.items():
        if key in core:
            continue
        if key == "verify" and isinstance(value, list):
            checks = []
            for check in value:
                try:
                    checks.append(Check.model_validate(check))
                except ValidationError:  # reported already; a placeholder keeps the indices
                    checks.append(Check(expr="true"))
            core["verify"] = checks
            continue
        try:
            Step.model_validate({**core, key: value})
            core[key] = value
        except ValidationError:
            continue
    return Step.model_validate(core)


@dataclass
class LoadedWorkflow:
    workflow: Workflow
    source: Source
    base_dir: Path | None = None


def load_workflow(path: str | Path, limits: Limits | None = None) -> LoadedWorkflow:
    """Read and parse a YAML workflow file. Raises PlanError naming file and line.

    At most ``limits.workflow_bytes`` are read; a file that is not UTF-8 text is refused."""
    path = Path(path)
    limits = limits or Limits()
    try:
        with path.open("rb") as f:
            raw = f.read(limits.workflow_bytes + 1)
    except OSError as exc:
        raise PlanError(
            [PlanIssue(f"cannot read the workflow: {exc.strerror}", file=str(path))]
        ) from None
    if len(raw) > limits.workflow_bytes:
        raise PlanError([_too_big(str(path), limits)])
    text = _decode(raw, str(path))
    return loads_workflow(text, file=str(path), base_dir=path.resolve().parent, limits=limits)


def _too_big(file: str | None, limits: Limits) -> PlanIssue:
    return PlanIssue(
        f"the workflow file is more than {limits.workflow_bytes:,} bytes",
        file=file,
        hint=f"split the workflow, or {limits.raise_hint('workflow_bytes')}",
    )


def _decode(raw: bytes, file: str) -> str:
    """The file's text; PlanError when it is binary (has a NUL byte) or not UTF-8, at the line
    of the first byte that is NUL or not UTF-8."""
    try:
        text = raw.decode("utf-8")
        bad = None
    except UnicodeDecodeError as exc:
        text, bad = "", exc.start
    nul = raw.find(b"\0")
    if nul < 0 and bad is None:
        return text
    at = min(p for p in (nul, bad) if p is not None and p >= 0)
    if nul >= 0:
        message = "a binary file, not a YAML workflow (it has NUL bytes)"
        hint = "give the workflow's .yaml file; if this is UTF-16 text, save it as UTF-8"
    else:
        message = f"not UTF-8 text: byte 0x{raw[at]:02x} cannot be decoded"
        hint = "save the file as UTF-8"
    line = raw.count(b"\n", 0, at) + 1
    raise PlanError([PlanIssue(message, file=file, line=line, hint=hint)])


def loads_workflow(
    text: str,
    *,
    file: str | None = None,
    base_dir: Path | None = None,
    limits: Limits | None = None,
) -> LoadedWorkflow:
    """Parse a workflow's YAML text under ``limits`` (default: ``Limits()``)."""
    limits = limits or Limits()
    if len(text) > limits.workflow_bytes or len(_utf8(text)) > limits.workflow_bytes:
        raise PlanError([_too_big(file, limits)])
    data, source = parse_yaml(text, file, limits)
    steps = data.get("steps") if isinstance(data, Mapping) else None
    if isinstance(steps, list) and len(steps) > limits.steps:
        issue = source.issue(
            f"the workflow has {len(steps):,} steps, more than the limit of {limits.steps:,}",
            ("steps",),
            field="steps",
            hint=f"split the workflow, or {limits.raise_hint('steps')}",
        )
        raise PlanError([issue])
    return LoadedWorkflow(workflow_from_data(data, source), source, base_dir)


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def dump_workflow(workflow: Workflow) -> str:
    return yaml.safe_dump(workflow.to_data(), sort_keys=False, allow_unicode=True)


__all__ = [
    "LoadedWorkflow",
    "Source",
    "dump_workflow",
    "issues_from_validation",
    "load_workflow",
    "loads_workflow",
    "parse_yaml",
    "workflow_from_data",
]
