"""dagwright replay benchmark: record a 200-step run that calls a model, then replay it.

Run from the repository root::

    .venv/bin/python bench/replay_bench.py            # 200 steps, 3 replays
    .venv/bin/python bench/replay_bench.py --steps 1000 --repeats 5

The recorded run: 50 layers of 4 steps, each step depending on the step above it and, from the
second layer on, on one step of the layer before (a mesh, so references cross). Per layer:
``llm.generate`` (a text answer from a model), ``echo`` (deterministic), ``sleep`` (20 ms, a
stand-in for a slow outside call) and ``llm.generate`` with a JSON schema (structured output).
The model is the repository's OpenAI-compatible TEST DOUBLE server (tests/openai_stub.py), on
localhost, serving recorded completions: the "record" figure is a floor, a real model adds
seconds per call.

The replay runs with the server stopped and every provider replaced by one that counts its calls
and raises: "provider calls" is that count. Figures: wall time of recording and of each replay
(median; the replay kept in memory, and recorded in the same SQLite trace store as ``dagwright
replay`` does), replay/record ratio, steps, attempts compared, model calls served, divergences.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the labelled test-double server

from openai_stub import OpenAIStub, text_reply, tool_reply  # noqa: E402

from dagwright.agents import models  # noqa: E402
from dagwright.executors.local import LocalExecutor  # noqa: E402
from dagwright.executors.replay import replay_run  # noqa: E402
from dagwright.executors.store.memory import MemoryTraceStore  # noqa: E402
from dagwright.executors.store.sql import SqlTraceStore  # noqa: E402
from dagwright.planner.schema import Workflow  # noqa: E402
from dagwright.tools import default_registry  # noqa: E402

SCHEMA = {"type": "object", "required": ["score"], "properties": {"score": {"type": "integer"}}}


def workflow(steps: int) -> Workflow:
    layers = steps // 4
    out: list[dict[str, Any]] = []
    for layer in range(layers):
        prev = f"l{layer - 1}" if layer else None
        ask: dict[str, Any] = {"model": "openai:stub", "prompt": f"Layer {layer}: say something."}
        if prev:
            ask["prompt"] += f" Before: ${{{{ steps.{prev}_echo.output.n }}}}"
        out.append({"id": f"l{layer}_ask", "uses": "llm.generate", "with": ask})
        out.append({"id": f"l{layer}_echo", "uses": "echo",
                    "with": {"n": layer, "said": f"${{{{ steps.l{layer}_ask.output }}}}"}})  # fmt: skip
        out.append({"id": f"l{layer}_wait", "uses": "sleep", "with": {"ms": 20},
                    "needs": [f"l{layer}_echo"]})  # fmt: skip
        out.append({"id": f"l{layer}_score", "uses": "llm.generate",
                    "with": {"model": "openai:stub", "schema": SCHEMA,
                             "prompt": f"Score ${{{{ steps.l{layer}_echo.output.said }}}}"},
                    "needs": [f"l{layer}_wait"]})  # fmt: skip
    return Workflow.model_validate({"name": f"replay-bench-{steps}", "steps": out})


def respond(body: dict[str, Any]) -> dict[str, Any]:
    """The recorded reply for a request (the layers ask concurrently, in no fixed order)."""
    prompt = str(body["messages"][-1]["content"])
    if body.get("tools"):
        return tool_reply("Answer", {"value": {"score": len(prompt) % 7}})
    return text_reply("answer to " + prompt.split(":")[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    wf = workflow(args.steps)
    with tempfile.TemporaryDirectory() as tmp:
        store = SqlTraceStore(str(Path(tmp) / "trace.db"))
        with OpenAIStub(respond=respond) as server:
            import os

            os.environ["DAGWRIGHT_MODEL_BASE_URL"] = server.base_url
            started = time.perf_counter()
            run = LocalExecutor(store, default_registry, max_parallel=16).run(wf)
            recorded = time.perf_counter() - started
            served_by_server = len(server.requests)
        assert run.status == "succeeded", run.error
        provider_calls: list[str] = []

        def refuse(model: str, *a: Any, **k: Any) -> Any:
            provider_calls.append(model)
            raise RuntimeError("replay called a provider")

        models.connect = refuse  # type: ignore[assignment]
        models._PROVIDERS.clear()  # noqa: SLF001 - nothing may reach a provider
        times, sql_times, report = [], [], None
        for _ in range(args.repeats):
            report = replay_run(store, run.run_id, default_registry, into=MemoryTraceStore())
            times.append(report.seconds)
            kept = replay_run(store, run.run_id, default_registry)  # as `dagwright replay` does
            sql_times.append(kept.seconds)
            assert not kept.divergences
        assert report is not None
        store.close()
    replay = statistics.median(times)
    replay_sql = statistics.median(sql_times)
    print(f"replay of a {len(wf.steps)}-step recorded run ({args.repeats} replays, median)")
    print(f"  record (model on localhost, {served_by_server} model calls): {recorded:8.3f} s")
    print(f"  replay (kept in memory, --no-record):          {replay:8.3f} s")
    print(f"  replay (recorded in the SQLite trace):         {replay_sql:8.3f} s")
    print(f"  replay / record:                               {replay / recorded:8.3f}")
    print(f"  attempts compared:     {report.attempts_compared}")
    print(f"  model calls served:    {report.model_calls_served}")
    print(f"  provider calls:        {len(provider_calls)}")
    print(f"  divergences:           {len(report.divergences)}")


if __name__ == "__main__":
    main()
