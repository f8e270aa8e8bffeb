"""dagwright at scale: `dagwright validate` and `dagwright run` of 1,000 to 50,000-step plans.

Run from the repository root::

    .venv/bin/python bench/scale_bench.py                         # 1k, 10k, 50k; SQLite + PostgreSQL
    .venv/bin/python bench/scale_bench.py --sizes 1000,10000      # smaller
    .venv/bin/python bench/scale_bench.py --stores sqlite --shapes chain

Each figure is a fresh `dagwright` process, as a user runs it (the CLI's defaults: progress
lines to a pipe, here /dev/null; ``--max-parallel`` unset), on a generated workflow of no-op
``echo`` steps:

- ``chain``: N steps in a line (each ``needs`` the one before);
- ``wide``: a root, N-2 steps that each need it, and a sink that needs them all.

``validate``: `dagwright validate FILE`. ``run``: `dagwright run FILE --db STORE` on a fresh store
(a SQLite file in a temporary directory; a fresh PostgreSQL schema, dropped after). Reported per
process: wall time, CPU time (user + system, of the process alone: steadier than wall time on a
shared machine), and peak memory (max RSS). From the run's trace: its **span** (``run_started``
to ``run_finished``: the executor's own work) and **ms/step** = span / N. **after** = from
``run_finished`` to the process's exit (the CLI's own cost after a run: it should not grow with
the trace). Peak memory comes from GNU time (``/usr/bin/time``; 0 without it). **cpu ms/step** = (CPU time of the run - CPU time of the same command on a 1-step
plan) / N: the per-step CPU cost, steadier than wall time on a shared machine. **KiB/step** = (peak RSS - the peak RSS of the same command on a 1-step plan) / N.

The **growth exponent** of a series is the least-squares slope of log(time) against log(N): 1.0
is linear, 2.0 quadratic. The goals (issue 14): run ms/step at 50k within 1.3x of 1k, chain and
wide, on SQLite and PostgreSQL; `validate` of 10k < 1 s, of 50k < 5 s.

The machine's load average is printed before and after each series: other processes on a
shared machine inflate wall times (CPU times less so). ``--repeats N`` gives the median of N.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DAGWRIGHT = str(Path(sys.executable).parent / "dagwright")
PG_DEFAULT = "postgresql://postgres@127.0.0.1:5432/test"
GOAL_RATIO = 1.3  # run ms/step at the largest size within 1.3x of the smallest
GOAL_VALIDATE = {10_000: 1.0, 50_000: 5.0}  # seconds


def workflow(shape: str, n: int) -> dict[str, object]:
    if shape == "chain":
        steps = [
            {
                "id": f"s{i}",
                "uses": "echo",
                "with": {"i": i},
                **({"needs": [f"s{i - 1}"]} if i else {}),
            }
            for i in range(n)
        ]
    elif shape == "wide":
        mids = [f"m{i}" for i in range(max(0, n - 2))]
        steps = [
            {"id": "root", "uses": "echo", "with": {"i": 0}},
            *(
                {"id": m, "uses": "echo", "with": {"i": i}, "needs": ["root"]}
                for i, m in enumerate(mids)
            ),
            {"id": "sink", "uses": "echo", "with": {"i": n}, "needs": mids},
        ][:n]
    else:
        raise SystemExit(f"unknown shape {shape!r}")
    return {"name": f"{shape}-{n}", "steps": steps}


@dataclass
class Proc:
    wall: float
    cpu: float
    rss_kib: int
    ended_at: float  # time.time() when the process had exited


TIME = shutil.which("time", path="/usr/bin:/bin")
"""GNU time, to read a command's peak memory: ``ru_maxrss`` of a child that Python started
counts the memory of the (large) parent it was forked from."""


def measure(argv: list[str], env: dict[str, str]) -> Proc:
    with tempfile.NamedTemporaryFile("r", suffix=".time") as report:
        wrapped = [TIME, "-f", "%U %S %M", "-o", report.name, *argv] if TIME else argv
        start = time.perf_counter()
        proc = subprocess.Popen(wrapped, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)  # fmt: skip
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        ended = time.time()
        stderr = proc.stderr.read().decode() if proc.stderr else ""
        if proc.stderr:
            proc.stderr.close()
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} exited {proc.returncode}:\n{stderr[-3000:]}")
        if TIME:
            user, system, rss = report.read().split()[-3:]
            return Proc(wall, float(user) + float(system), int(rss), ended)
    return Proc(wall, usage.ru_utime + usage.ru_stime, 0, ended)


@contextmanager
def fresh_store(kind: str, tmp: Path, pg: str) -> Iterator[str]:
    if kind == "sqlite":
        folder = Path(tempfile.mkdtemp(dir=tmp))
        try:
            yield str(folder / "trace.db")
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return
    import psycopg

    schema = f"scale_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in pg else "?"
    try:
        yield f"{pg}{sep}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(pg, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def span_of(store_target: str) -> tuple[float, float, str]:
    """(run_started.at, run_finished.at, status) of the store's one run."""
    from dagwright.executors.engine import events as ev
    from dagwright.executors.store import open_store

    store = open_store(store_target, create=False)
    try:
        [run] = store.list_runs(limit=2)
        events = store.events(run.record.run_id)
        started = next(e.at for e in events if e.type == ev.RUN_STARTED)
        finished = next(e.at for e in reversed(events) if e.type == ev.RUN_FINISHED)
        return started, finished, run.status
    finally:
        store.close()


@dataclass
class RunFigures:
    proc: Proc
    span: float
    after: float


def run_once(path: Path, n: int, kind: str, tmp: Path, pg: str, env: dict[str, str]) -> RunFigures:
    with fresh_store(kind, tmp, pg) as target:
        proc = measure([DAGWRIGHT, "run", str(path), "--db", target], env)
        started, finished, status = span_of(target)
    assert status == "succeeded", status
    return RunFigures(proc, finished - started, proc.ended_at - finished)


def median_of(repeats: int, once: Callable[[], RunFigures]) -> RunFigures:
    samples = [once() for _ in range(repeats)]
    return sorted(samples, key=lambda s: s.span)[len(samples) // 2]


def exponent(sizes: list[int], times: list[float]) -> float:
    xs, ys = [math.log(n) for n in sizes], [math.log(max(t, 1e-9)) for t in times]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mx) ** 2 for x in xs
    )


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.1f}/{five:.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,50000")
    parser.add_argument("--shapes", default="chain,wide")
    parser.add_argument("--stores", default="sqlite,postgres")
    parser.add_argument("--pg", default=os.environ.get("DAGWRIGHT_TEST_PG", PG_DEFAULT),
                        help="PostgreSQL database for --stores postgres (a schema per run)")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=1, help="runs per figure (median)")
    parser.add_argument("--no-validate", action="store_true")
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    shapes, stores = args.shapes.split(","), args.stores.split(",")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DAGWRIGHT_")}
    env |= {
        "NO_COLOR": "1",
        "DAGWRIGHT_MAX_STEPS": str(max(sizes)),
        "DAGWRIGHT_MAX_WORKFLOW_BYTES": str(200 * max(sizes) + (1 << 20)),
    }
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()  # fmt: skip
    print(f"# dagwright scale bench ({date.today()}, commit {commit}, Python "
          f"{platform.python_version()}, {os.cpu_count()} CPUs, {load()})")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="dagwright-scale-") as tmp_name:
        tmp = Path(tmp_name)
        files = {}
        for shape in shapes:
            for n in [1, *sizes]:
                path = tmp / f"{shape}-{n}.yaml"
                path.write_text(yaml.safe_dump(workflow(shape, n), sort_keys=False, width=10**6))
                files[shape, n] = path
        if not args.no_validate:
            print(f"\n## dagwright validate ({load()})")
            print(f"{'plan':<12} {'wall s':>7} {'cpu s':>7} {'peak MiB':>9} {'KiB/step':>9}")
            for shape in shapes:
                base = measure([DAGWRIGHT, "validate", str(files[shape, 1])], env)
                walls = []
                for n in sizes:
                    runs = [measure([DAGWRIGHT, "validate", str(files[shape, n])], env)
                            for _ in range(args.repeats)]  # fmt: skip
                    p = sorted(runs, key=lambda r: r.wall)[len(runs) // 2]
                    walls.append(p.wall)
                    per = (p.rss_kib - base.rss_kib) / n
                    goal = GOAL_VALIDATE.get(n)
                    verdict = (
                        ""
                        if goal is None
                        else f"  goal < {goal:g} s: " + ("met" if p.wall < goal else "MISSED")
                    )
                    print(f"{shape}-{n:<6} {p.wall:>7.2f} {p.cpu:>7.2f} "
                          f"{p.rss_kib / 1024:>9.1f} {per:>9.2f}{verdict}")  # fmt: skip
                if len(sizes) > 1:
                    print(f"{shape}: growth exponent of validate time {exponent(sizes, walls):.2f}")
        for kind in stores:
            print(f"\n## dagwright run, {kind} ({load()})")
            print(f"{'plan':<12} {'wall s':>7} {'cpu s':>7} {'span s':>7} {'ms/step':>8} "
                  f"{'cpu ms/step':>11} {'after s':>8} {'peak MiB':>9} {'KiB/step':>9}")  # fmt: skip
            for shape in shapes:
                base = run_once(files[shape, 1], 1, kind, tmp, args.pg, env)
                spans, per_step, cpu_step = [], [], []
                for n in sizes:
                    once = functools.partial(run_once, files[shape, n], n, kind, tmp, args.pg, env)
                    r = median_of(args.repeats, once)
                    spans.append(r.span)
                    per_step.append(1000 * r.span / n)
                    cpu_step.append(1000 * (r.proc.cpu - base.proc.cpu) / n)
                    per = (r.proc.rss_kib - base.proc.rss_kib) / n
                    print(f"{shape}-{n:<6} {r.proc.wall:>7.2f} {r.proc.cpu:>7.2f} {r.span:>7.2f} "
                          f"{per_step[-1]:>8.3f} {cpu_step[-1]:>11.3f} {r.after:>8.3f} "
                          f"{r.proc.rss_kib / 1024:>9.1f} {per:>9.2f}", flush=True)  # fmt: skip
                if len(sizes) > 1:
                    ratio = per_step[-1] / per_step[0]
                    cpu_ratio = cpu_step[-1] / cpu_step[0]
                    verdict = "met" if ratio <= GOAL_RATIO else "MISSED"
                    print(f"{shape}: growth exponent of the run's span {exponent(sizes, spans):.2f}; "
                          f"ms/step {sizes[-1]:,} / {sizes[0]:,} = {ratio:.2f} "
                          f"(goal <= {GOAL_RATIO}: {verdict}); cpu ms/step {cpu_ratio:.2f}  "
                          f"({load()})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
