"""Runs derived from runs: ``resume`` and ``fork`` (pure: no I/O).

A derived run is a new run, linked to its parent. Steps that succeeded in the parent and that do
not run again are *reused*: their recorded outputs enter the new run's trace as ``step_finished``
events marked ``reused`` (no attempt, nothing executed). The steps that run again are the
``--from`` steps, every step that did not succeed in the parent, and everything downstream of
them.

A reused output must still be what its step would produce: ``derive`` refuses an edit that
changes the definition of a reused step, or inputs that change the arguments it ran with.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from dagwright.errors import PlanError, PlanIssue
from dagwright.executors.engine import state as st
from dagwright.executors.engine.events import Event
from dagwright.executors.engine.outcome import SUCCEEDED
from dagwright.planner.plan import Plan
from dagwright.planner.references import ExpressionError, render
from dagwright.planner.schema import Workflow
from dagwright.planner.secret_refs import AS_RECORDED, SECRETS
from dagwright.planner.source import Source

RESUME, FORK, REPLAY = "resume", "fork", "replay"

# the fields of a step, in the order a changed one is named
_STEP_FIELDS = ("uses", "with", "needs", "verify", "retry", "timeout", "cache", "on_failure")


@dataclass
class Derivation:
    """What a derived run starts with."""

    workflow: Workflow
    inputs: dict[str, Any]
    reused: dict[str, dict[str, Any]]
    """step id → ``{"output", "inputs", "attempts", "run_id"}`` from the run it succeeded in."""
    rerun: list[str]
    lineage: dict[str, Any] = field(default_factory=dict)


def parent_state(workflow: dict[str, Any], run_id: str, events: list[Event]) -> st.RunState:
    """A run's state folded from its trace (``.plan`` is the plan in force at its end)."""
    plan = Plan.from_workflow(Workflow.model_validate(workflow))
    state = st.fold(plan, run_id, events)
    state.plan = state.plan or plan
    return state


def descendants(plan: Plan, seeds: Iterable[str]) -> set[str]:
    """``seeds`` and every step downstream of them."""
    found: set[str] = set()
    todo = [s for s in seeds if s in plan.steps]
    while todo:
        sid = todo.pop()
        if sid in found:
            continue
        found.add(sid)
        todo.extend(plan.dependents[sid])
    return found


def reused_record(state: st.RunState, sid: str) -> dict[str, Any]:
    """What a derived run keeps of a succeeded step: where it really ran, with what, and how."""
    step = state.steps[sid]
    if step.reused:  # reused already: point at the run that executed it
        return dict(step.reused) | {"output": step.output}
    last = step.attempts[-1] if step.attempts else None
    return {
        "run_id": state.run_id,
        "attempts": len(step.attempts),
        "inputs": last.inputs if last else None,
        "output": step.output,
    }


def derive(
    parent: st.RunState,
    workflow: Workflow,
    inputs: dict[str, Any],
    *,
    mode: str,
    from_steps: list[str],
    source: Source | None = None,
    from_changed: bool = False,
) -> Derivation:
    """Which steps of ``workflow`` (validated, with resolved ``inputs``) reuse the parent's
    outputs and which run again. Raises PlanError naming every step whose reuse would be
    inconsistent — what differs, field by field — and the ``--from`` that fixes them all.

    ``from_changed`` (a fork without ``--from``): a step whose arguments the new inputs change
    runs again (with everything downstream) instead of being refused."""
    source = source or Source()
    assert parent.plan is not None
    plan = Plan.from_workflow(workflow)
    before = {s.id: s for s in parent.plan.workflow.steps}
    issues: list[PlanIssue] = []
    for sid in from_steps:
        if sid not in plan.steps:
            issues.append(
                PlanIssue(
                    f"--from {sid!r}: no such step in the workflow",
                    file=source.file,
                    field="from",
                    hint="steps: " + ", ".join(plan.order),
                )
            )
    succeeded = {
        sid for sid, s in parent.steps.items() if s.status == SUCCEEDED and sid in plan.steps
    }
    seeds = set(from_steps) | (set(plan.steps) - succeeded)
    rerun = descendants(plan, seeds)
    index = {s.id: i for i, s in enumerate(workflow.steps)}
    records: dict[str, dict[str, Any]] = {}
    outputs: dict[str, Any] = {}
    refused: dict[str, tuple[str, str, tuple[Any, ...], str]] = {}  # message, field, where, undo
    changed_now: list[str] = []  # (from_changed) steps whose arguments the inputs change
    for sid in plan.order:  # dependencies first: a step's context holds what it reuses
        if sid in rerun:
            continue
        records[sid] = reused_record(parent, sid)
        changed = _changed_field(before[sid].model_dump(), plan.steps[sid].model_dump())
        if changed is not None:
            key = "with_" if changed == "with" else changed
            what = _differences(
                before[sid].model_dump().get(key), plan.steps[sid].model_dump().get(key), changed
            )
            refused[sid] = (f"step {sid!r} changed since run {parent.run_id} ({what}), but its "
                            "recorded output would be reused", changed,
                            ("steps", index[sid], "with" if changed == "with" else changed),
                            "undo the change")  # fmt: skip
            continue
        recorded = records[sid].get("inputs")
        try:
            context = {"inputs": inputs, "steps": outputs, SECRETS: AS_RECORDED}
            now = render(plan.steps[sid].with_, context)
        except ExpressionError as exc:
            now = f"<cannot resolve: {exc}>"
        if recorded is not None and now != recorded:
            if from_changed:  # it runs again, with everything after it
                seeds.add(sid)
                changed_now.append(sid)
                rerun |= descendants(plan, {sid})
                continue
            what = _differences(recorded, now, "with")
            refused[sid] = (f"step {sid!r} would now get other arguments than its recorded "
                            f"output came from ({what}): the run's inputs changed", "with",
                            ("steps", index[sid], "with"), "keep the inputs")  # fmt: skip
            continue
        outputs[sid] = {"output": records[sid]["output"]}
    fix = _from_flags(plan, list(refused), from_steps)
    for sid, (message, changed, where, undo) in refused.items():
        issues.append(
            source.issue(
                message, where, step=sid, field=changed, hint=f"run it again: {fix}; or {undo}"
            )  # fmt: skip
        )
    reused = [sid for sid in plan.order if sid not in rerun]
    if not rerun and not issues:
        issues.append(
            PlanIssue(
                f"every step of run {parent.run_id} succeeded and nothing changed: "
                "nothing to run again",
                file=source.file,
                field="from",
                hint="give --from STEP to run a step and everything after it again",
            )
        )
    if issues:
        raise PlanError(issues)
    named = set(from_steps) | set(changed_now)
    from_list = [s for s in plan.order if s in named] or [s for s in plan.order if s in seeds]
    return Derivation(
        workflow=workflow,
        inputs=inputs,
        reused={sid: records[sid] for sid in reused},
        rerun=[s for s in plan.order if s in rerun],
        lineage={"parent": parent.run_id, "mode": mode, "from_steps": from_list},
    )


def _from_flags(plan: Plan, refused: list[str], given: list[str]) -> str:
    """The ``--from`` flags that make a derivation valid: those given, and each refused step
    that no other refused step runs again anyway (downstream of it)."""
    roots = [
        s for s in refused
        if not any(s in descendants(plan, [r]) for r in refused if r != s)
    ]  # fmt: skip
    covered = descendants(plan, roots)
    wanted = set(roots) | {s for s in given if s not in covered}
    return " ".join(f"--from {s}" for s in plan.order if s in wanted)


_SHOWN_DIFFERENCES = 5


def _differences(old: Any, new: Any, path: str) -> str:
    """What differs between two values, leaf by leaf: ``with.region: "north" → "south"``."""
    found: list[str] = []
    _walk_differences(old, new, path, found)
    more = len(found) - _SHOWN_DIFFERENCES
    shown = "; ".join(found[:_SHOWN_DIFFERENCES])
    return shown + (f"; and {more} more" if more > 0 else "") if found else path


def _walk_differences(old: Any, new: Any, path: str, found: list[str]) -> None:
    if old == new or len(found) > _SHOWN_DIFFERENCES:
        return
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        for key in list(old) + [k for k in new if k not in old]:
            missing = object()
            _walk_differences(old.get(key, missing), new.get(key, missing), f"{path}.{key}", found)
        return
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            _walk_differences(a, b, f"{path}[{i}]", found)
        return
    found.append(f"{path}: {_shown(old)} → {_shown(new)}")


def _shown(value: Any) -> str:
    if not isinstance(value, str | int | float | bool | list | dict | type(None)):
        return "(not there)"  # a key one side does not have
    return _short(value, 60)


def step_view(step: st.StepState) -> dict[str, Any]:
    """A step as ``diff`` compares it: a reused step shows the inputs it ran with upstream."""
    last = step.attempts[-1] if step.attempts else None
    reused = step.reused or {}
    return {
        "status": step.status,
        "attempts": len(step.attempts),
        "reused_from": reused.get("run_id"),
        "inputs": last.inputs if last else reused.get("inputs"),
        "output": step.output,
        "error": (step.error or {}).get("message"),
    }


def compare_runs(a: st.RunState, b: st.RunState) -> dict[str, Any]:
    """Per step: what differs between two runs (status, attempts, resolved inputs, output,
    error); and the runs' own inputs, status and output. Reused steps are compared by what
    they carry, and their attempt counts are not a difference."""
    run = {
        name: {"a": getattr(a, name), "b": getattr(b, name)}
        for name in ("inputs", "status", "output")
        if getattr(a, name) != getattr(b, name)
    }
    order = list(a.steps) + [sid for sid in b.steps if sid not in a.steps]
    steps: dict[str, Any] = {}
    identical: list[str] = []
    for sid in order:
        va = step_view(a.steps[sid]) if sid in a.steps else None
        vb = step_view(b.steps[sid]) if sid in b.steps else None
        if va is None or vb is None:
            steps[sid] = {"differs": ["presence"], "a": va, "b": vb}
            continue
        differs = [f for f in ("status", "inputs", "output", "error") if va[f] != vb[f]]
        if va["attempts"] != vb["attempts"] and not (va["reused_from"] or vb["reused_from"]):
            differs.insert(1, "attempts")
        if differs:
            steps[sid] = {"differs": differs, "a": va, "b": vb}
        else:
            identical.append(sid)
    return {"a": a.run_id, "b": b.run_id, "run": run, "steps": steps, "identical": identical}


def _changed_field(old: Mapping[str, Any], new: Mapping[str, Any]) -> str | None:
    for name in _STEP_FIELDS:
        key = "with_" if name == "with" else name
        if old.get(key) != new.get(key):
            return name
    return None if old == new else "definition"


def _short(value: Any, limit: int = 160) -> str:
    text = json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def apply_sets(
    workflow: dict[str, Any], sets: list[str]
) -> tuple[dict[str, Any], dict[str, str], list[str]]:
    """``fork --set``: ``steps.<id>.<field>[.<key>…]=VALUE`` edits the workflow (a copy);
    ``inputs.<name>=VALUE`` sets a run input. VALUE is JSON where it parses as JSON, else text.

    Returns the edited workflow, the inputs given (as text), and the ids of the edited steps.
    Raises PlanError naming each --set that cannot apply."""
    data = json.loads(json.dumps(workflow))
    by_id = {s.get("id"): s for s in data.get("steps", [])}
    inputs: dict[str, str] = {}
    edited: list[str] = []
    issues: list[PlanIssue] = []
    for item in sets:
        path, sep, raw = item.partition("=")
        parts = path.strip().split(".")
        if not sep or len(parts) < 2 or parts[0] not in ("steps", "inputs"):
            issues.append(
                PlanIssue(
                    f"--set {item!r}: write it as steps.<id>.with.<arg>=VALUE "
                    "(or inputs.<name>=VALUE)",
                    field="set",
                )
            )
            continue
        if parts[0] == "inputs":
            inputs[".".join(parts[1:])] = raw
            continue
        sid = parts[1]
        if sid not in by_id or len(parts) < 3:
            issues.append(
                PlanIssue(
                    f"--set {item!r}: no step {sid!r}" if sid not in by_id else
                    f"--set {item!r}: name the field, e.g. steps.{sid}.with.<arg>",
                    step=sid if sid in by_id else None,
                    field="set",
                    hint="steps: " + ", ".join(str(k) for k in by_id),
                )
            )  # fmt: skip
            continue
        target = by_id[sid]
        for key in parts[2:-1]:
            nxt = target.get(key)
            if nxt is None:
                nxt = target[key] = {}
            if not isinstance(nxt, dict):
                issues.append(
                    PlanIssue(f"--set {item!r}: {key!r} is not a mapping", step=sid, field=path)
                )
                break
            target = nxt
        else:
            target[parts[-1]] = _value(raw)
            if sid not in edited:
                edited.append(sid)
    if issues:
        raise PlanError(issues)
    return data, inputs, edited


def _value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw


__all__ = [
    "FORK",
    "REPLAY",
    "RESUME",
    "Derivation",
    "apply_sets",
    "compare_runs",
    "derive",
    "descendants",
    "parent_state",
    "reused_record",
    "step_view",
]
