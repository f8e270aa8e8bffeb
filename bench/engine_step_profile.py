"""Where a Celery step's time goes inside dagwright's distributed engine (no broker, no Celery).

Drives ``executors.distributed.engine.Engine`` in one process, as workers do: ``start`` a no-op chain
(``sleep ms=0``), then ``execute`` each dispatch and feed back what it returns, on a fresh SQLite
trace store. Prints ms/step for the first and last 10 steps (the trace grows as the run goes),
the same with two engines (two store objects, like two prefork pool processes) taking turns, and
optionally a cProfile. Then runs random-s1 (``dag_bench.py``'s DAG, 10-200 ms sleeps) through one
engine from a pool of 64 threads, as a ``--pool threads --concurrency 64`` worker would, still
without a broker::

    .venv/bin/python bench/engine_step_profile.py [--steps 100] [--profile] [--threads 64]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import shutil
import sys
import tempfile
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dag_bench import chain, dagwright_workflow, layered  # noqa: E402

from dagwright.executors.distributed.engine import Engine  # noqa: E402
from dagwright.executors.store import sql as sqlmod  # noqa: E402
from dagwright.tools import default_registry  # noqa: E402


def dag_threads(eng: Engine, threads: int, counts: dict[str, int]) -> None:
    w = layered(1, (60, 100), (6, 10))
    wf = dagwright_workflow(w)
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(2):  # the first run warms up the threads
            counts.update(appends=0, events=0, reads=0)
            t0 = time.perf_counter()
            _, first = eng.start(wf, {})
            futures = {pool.submit(eng.execute, d) for d in first}
            while futures:
                done, futures = wait(futures, return_when=FIRST_COMPLETED)
                for f in done:
                    futures |= {pool.submit(eng.execute, d) for d in f.result()}
            makespan = time.perf_counter() - t0
    print(
        f"{w.name} ({w.size} steps), {threads} threads, one engine: makespan {makespan:.3f} s, "
        f"ratio {makespan / w.critical_path_s():.3f} to the critical path "
        f"({w.critical_path_s():.3f} s); events read per step {counts['events'] / w.size:.0f} "
        f"(the trace ends with {4 * w.size + 2})"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--sort", default="cumulative", help="profile order: cumulative, tottime")
    parser.add_argument("--threads", type=int, default=64, help="threads for the DAG run (0: skip)")
    args = parser.parse_args()
    n = args.steps
    wf = dagwright_workflow(chain(n, 0, kind="noop"))
    tmp = tempfile.mkdtemp(prefix="engprof-")
    counts = {"appends": 0, "events": 0, "reads": 0}
    orig_append, orig_events = sqlmod.SqlTraceStore.append, sqlmod.SqlTraceStore.events

    def append(self, run_id, events, **kw):  # type: ignore[no-untyped-def]
        counts["appends"] += 1
        return orig_append(self, run_id, events, **kw)

    def events(self, run_id, after=0):  # type: ignore[no-untyped-def]
        out = orig_events(self, run_id, after)
        counts["events"] += len(out)
        counts["reads"] += 1
        return out

    sqlmod.SqlTraceStore.append = append  # type: ignore[method-assign]
    sqlmod.SqlTraceStore.events = events  # type: ignore[method-assign]
    try:
        for n_engines in (1, 2):
            stores = [sqlmod.SqlTraceStore(f"{tmp}/trace-{n_engines}.db") for _ in range(n_engines)]
            engines = [Engine(s, default_registry) for s in stores]

            def run(engines: list[Engine] = engines) -> list[float]:
                _, queue = engines[0].start(wf, {})
                per, i = [], 0
                while queue:
                    d = queue.pop(0)
                    t = time.perf_counter()
                    queue += engines[i % len(engines)].execute(d)
                    per.append(time.perf_counter() - t)
                    i += 1
                return per

            run()  # warm-up
            counts.update(appends=0, events=0, reads=0)
            t0 = time.perf_counter()
            per = run()
            total = time.perf_counter() - t0
            print(
                f"{n}-step no-op chain, {n_engines} engine(s) taking turns: "
                f"{1000 * total / n:.2f} ms/step (first 10: {1000 * sum(per[:10]) / 10:.2f}, "
                f"last 10: {1000 * sum(per[-10:]) / 10:.2f}); per step: "
                f"{counts['appends'] / n:.2f} appends (commits), {counts['reads'] / n:.2f} reads, "
                f"{counts['events'] / n:.1f} events read"
            )
            if args.profile and n_engines == 1:
                prof = cProfile.Profile()
                prof.enable()
                run()
                prof.disable()
                buf = io.StringIO()
                pstats.Stats(prof, stream=buf).strip_dirs().sort_stats(args.sort).print_stats(30)
                text = buf.getvalue()
                print(text[text.find("   ncalls") :])
            for s in stores:
                s.close()
        if args.threads:
            store = sqlmod.SqlTraceStore(f"{tmp}/trace-dag.db")
            dag_threads(Engine(store, default_registry), args.threads, counts)
            store.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
