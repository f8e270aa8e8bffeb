"""dagwright's Celery executor vs raw Celery: per-step overhead, makespan, throughput.

Run from the repository root, with a Redis server::

    .venv/bin/python bench/celery_bench.py            # full run (1-2 minutes on 2 cores)
    .venv/bin/python bench/celery_bench.py --quick    # smaller sizes, a smoke check
    .venv/bin/python bench/celery_bench.py --redis redis://127.0.0.1:6380

The Redis server is ``--redis`` (default: the server of the settings' broker, DAGWRIGHT_BROKER,
``redis://127.0.0.1:6379`` when unset); the benchmark uses two databases of it (below).

The benchmark starts its own workers as subprocesses and stops them at the end (also on errors):

- ``dagwright``: ``dagwright worker --pool P --concurrency N -l WARNING`` with ``DAGWRIGHT_DB``
  a fresh SQLite file in a temp dir (shared with this process, the client) and
  ``DAGWRIGHT_BROKER`` = Redis db ``--redis-db`` (13; flushed before and after). The client
  builds its app with ``create_app(Settings(broker=..., db=...))``, starts a run with
  ``Engine.start`` + ``runtime(app).send`` and follows it to its end the way ``dagwright run
  --executor celery`` does: ``lifecycle.follow(store, run_id, wait=...)`` tails and folds the
  trace, its ``wait`` blocking on the Redis list the worker that records ``run_finished``
  pushes to (``runtime(app).wait_finished``); ``on_event`` collects the attempts' start times.
  (With ``--poll-ms N`` it re-reads the trace every N ms instead, as it did before the signal
  existed.)
- ``raw celery``: ``celery -A raw_celery_app worker`` (``bench/raw_celery_app.py``) with the
  same settings (acks_late, prefetch 1, JSON, no result backend, ``--without-gossip
  --without-mingle``) and the same pool/concurrency, on Redis db ``--raw-redis-db`` (12). Each
  task sends its successors with ``apply_async`` when its body ends; the client BLPOPs a Redis
  list the last task pushes to. No trace, no state: the floor for a Celery-based engine.

Both engines' workers of one configuration run at the same time (idle ones wait on BRPOP) and
the timed runs alternate between engines, so drift on this noisy VM hits both alike.

Sections:

1. per-step overhead: a chain of no-op steps (``sleep ms=0``; raw: an empty task), prefork,
   concurrency 2. ms/step = makespan / steps. Target: dagwright <= 1.5 x raw Celery.
2. makespan / critical path on the random layered DAGs of ``dag_bench.py`` (same seeds,
   10-200 ms sleep steps), ``--pool threads --concurrency 64``. Target: <= 1.15.
3. throughput: 1 root -> W no-op steps -> 1 sink, prefork, concurrency 2; steps/s =
   steps / makespan.

Makespan is measured by the client: from just before ``Engine.start`` (raw: storing the DAG and
sending its roots) to seeing the end (``run_finished`` in the trace; raw: the BLPOP returning).
For dagwright the "span" is read from the trace: first ``attempt_started`` -> ``run_finished``.
Each figure is the median of ``--repeats`` timed runs after one untimed warm-up run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from importlib.metadata import version
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

from dag_bench import Workload, chain, dagwright_workflow, fan, layered  # noqa: E402

REDIS = "redis://127.0.0.1:6379"  # set by main(): --redis, else the settings' broker's server


def redis_server(url: str) -> str:
    """``url`` without its database number (``redis://host:port/0`` -> ``redis://host:port``)."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise SystemExit(f"--redis {url!r}: give a redis:// or rediss:// URL")
    return urlunsplit((parts.scheme, parts.netloc, "", parts.query, ""))


TARGET_OVERHEAD_RATIO = 1.5  # dagwright ms/step <= 1.5 x raw Celery (no-op chain)
TARGET_RATIO = 1.15  # makespan <= 1.15 x critical path on random DAGs
RUN_TIMEOUT = 120.0


# --- workers ------------------------------------------------------------------------------------


class Worker:
    """A Celery worker subprocess in a session of its own (its pool children share its group)."""

    def __init__(
        self, engine: str, pool: str, concurrency: int, logdir: Path, env: dict[str, str]
    ) -> None:
        self.engine = engine
        self.name = (
            f"bench-{engine}-{pool}{concurrency}-{uuid.uuid4().hex[:6]}@{socket.gethostname()}"
        )
        self.log = logdir / f"{self.name.split('@')[0]}.log"
        common = [f"--concurrency={concurrency}", f"--pool={pool}", "--loglevel=WARNING"]
        env = dict(env)
        if engine == "dagwright":
            script = Path(sys.executable).parent / "dagwright"
            if script.exists():
                cmd = [str(script), "worker", *common, f"--name={self.name}"]
            else:  # the same as `dagwright worker`
                cmd = [sys.executable, "-m", "celery", "-A", "dagwright.worker"]
                cmd += ["worker", *common, "--without-gossip", "--without-mingle"]
                cmd += [f"--hostname={self.name}"]
        else:
            cmd = [sys.executable, "-m", "celery", "-A", "raw_celery_app", "worker", *common]
            cmd += ["--without-gossip", "--without-mingle", f"--hostname={self.name}"]
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(BENCH), env.get("PYTHONPATH")]))
        self._logf = open(self.log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdout=self._logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, app: Any, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"worker {self.name} exited ({self.proc.returncode}):\n{self.tail()}"
                )
            if app.control.ping(destination=[self.name], timeout=0.5):
                return
        raise RuntimeError(f"worker {self.name} not ready after {timeout:g}s:\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                # warm shutdown: the main process stops its pool (signalling the pool processes
                # directly makes it log their deaths as errors)
                os.kill(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            except ProcessLookupError:
                pass
        try:  # the pool children, should any outlive their parent
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if self.proc.poll() is None:
            self.proc.wait(timeout=10)
        self._logf.close()


# --- engines ------------------------------------------------------------------------------------


@dataclass
class Sample:
    makespan: float
    span: float | None = None  # dagwright: first attempt_started -> run_finished (trace times)
    client_cpu: float = 0.0  # CPU time of this (client) process during the run
    attempts: int = 0


@dataclass
class Result:
    samples: list[Sample] = field(default_factory=list)

    @property
    def makespan(self) -> float:
        return statistics.median(s.makespan for s in self.samples)

    @property
    def span(self) -> float | None:
        spans = [s.span for s in self.samples if s.span is not None]
        return statistics.median(spans) if spans else None

    @property
    def spread(self) -> tuple[float, float]:
        ms = [s.makespan for s in self.samples]
        return min(ms), max(ms)


class Dagwright:
    name = "dagwright"

    def __init__(self, broker: str, db: str, poll: float) -> None:
        from dagwright.executors import lifecycle
        from dagwright.executors.celery.app import create_app, runtime
        from dagwright.executors.distributed.engine import Engine
        from dagwright.executors.engine import events as ev
        from dagwright.executors.store.sql import SqlTraceStore
        from dagwright.settings import Settings
        from dagwright.tools import default_registry

        self.lifecycle, self.ev = lifecycle, ev
        self.app = create_app(Settings(broker=broker, db=db))
        self.rt = runtime(self.app)
        self.store = SqlTraceStore(db)
        self.engine = Engine(self.store, default_registry)
        self.poll = poll
        self.last_run_id = ""

    def delays(self, w: Workload) -> dict[str, float]:
        """Median delays of the last run's steps (ms, from the trace's timestamps)."""
        firsts: dict[str, dict[str, float]] = {}
        for e in self.store.events(self.last_run_id):
            if e.step is not None:
                firsts.setdefault(e.type, {}).setdefault(e.step, e.at)
        fin, sched = firsts[self.ev.STEP_FINISHED], firsts[self.ev.STEP_SCHEDULED]
        started, done = firsts[self.ev.ATTEMPT_STARTED], firsts[self.ev.ATTEMPT_FINISHED]
        gaps: dict[str, list[float]] = {"ready->scheduled": [], "scheduled->started": []}
        gaps["attempt-sleep"] = []
        for sid, ms in w.durations.items():
            if w.deps[sid]:
                ready = max(fin[d] for d in w.deps[sid])
                gaps["ready->scheduled"].append(1000 * (sched[sid] - ready))
            gaps["scheduled->started"].append(1000 * (started[sid] - sched[sid]))
            gaps["attempt-sleep"].append(1000 * (done[sid] - started[sid]) - ms)
        return {k: statistics.median(v) for k, v in gaps.items()}

    def chain_gaps(self) -> dict[str, float]:
        """Median per-step gaps of the last run, a chain (ms, from the trace's timestamps)."""
        started: list[float] = []
        finished: list[float] = []
        for e in self.store.events(self.last_run_id):
            if e.type == self.ev.ATTEMPT_STARTED:
                started.append(e.at)
            elif e.type == self.ev.STEP_FINISHED:
                finished.append(e.at)
        hops = [1000 * (s - f) for f, s in zip(finished, started[1:], strict=False)]
        attempts = [1000 * (f - s) for s, f in zip(started, finished, strict=False)]
        return {"hop": statistics.median(hops), "attempt": statistics.median(attempts)}

    def runner(self, w: Workload) -> Callable[[], Sample]:
        wf = dagwright_workflow(w)
        ev, store, eng, rt = self.ev, self.store, self.engine, self.rt

        def once() -> Sample:
            starts: list[float] = []

            def on_event(e: Any, _state: Any) -> None:
                if e.type == ev.ATTEMPT_STARTED:
                    starts.append(e.at)

            cpu0 = time.process_time()
            t0 = time.perf_counter()
            run_id, dispatches = eng.start(wf, {})
            rt.send(dispatches)
            # the CLI's "follow a run until it ends": tail and fold the trace; between reads,
            # block until a worker announces the end (as raw Celery's BLPOP), or sleep --poll-ms
            wait = None if self.poll else (lambda s: rt.wait_finished(run_id, s))
            try:
                state = self.lifecycle.follow(
                    store,
                    run_id,
                    on_event=on_event,
                    wait=wait,
                    poll=self.poll or 1.0,
                    timeout=RUN_TIMEOUT,
                )
            except Exception as exc:
                raise RuntimeError(f"dagwright run {run_id} ({w.name}): {exc}") from exc
            makespan = time.perf_counter() - t0
            cpu = time.process_time() - cpu0
            if state.status != "succeeded" or state.finished_at is None:
                raise RuntimeError(
                    f"dagwright run {run_id} ({w.name}) ended {state.status}: {state.error}"
                )
            self.last_run_id = run_id
            return Sample(makespan, state.finished_at - min(starts), cpu, len(starts))

        return once

    def close(self) -> None:
        self.store.close()


class RawCelery:
    name = "raw celery"

    def __init__(self) -> None:
        import raw_celery_app
        import redis

        self.mod = raw_celery_app
        self.app = raw_celery_app.app
        self.redis = redis.Redis.from_url(raw_celery_app.BROKER)

    def runner(self, w: Workload) -> Callable[[], Sample]:
        r, mod = self.redis, self.mod
        is_chain = w.kind == "noop"  # chain(..., kind="noop"): the minimal chain task
        dependents: dict[str, list[str]] = {sid: [] for sid in w.durations}
        for sid, ds in w.deps.items():
            for d in ds:
                dependents[d].append(sid)
        spec = json.dumps({"durations": w.durations, "dependents": dependents, "n": w.size})
        roots = [sid for sid, ds in w.deps.items() if not ds]

        def once() -> Sample:
            key = f"rawbench:{uuid.uuid4().hex}"
            cpu0 = time.process_time()
            t0 = time.perf_counter()
            if is_chain:  # the minimal task: no DAG lookup, no counters
                mod.chain_step.apply_async((key, 0, w.size))
            else:
                pipe = r.pipeline(transaction=False)
                pipe.set(f"{key}:spec", spec)
                for sid, ds in w.deps.items():
                    if ds:
                        pipe.set(f"{key}:pending:{sid}", len(ds))
                pipe.execute()
                for sid in roots:
                    mod.dag_step.apply_async((key, sid))
            got = r.blpop([f"{key}:fin"], timeout=RUN_TIMEOUT)
            makespan = time.perf_counter() - t0
            cpu = time.process_time() - cpu0
            if got is None:
                raise RuntimeError(f"raw celery run {key} ({w.name}) did not finish")
            keys = list(r.scan_iter(f"{key}:*", count=1000))
            if keys:
                r.delete(*keys)
            return Sample(makespan, None, cpu, w.size)

        return once

    def close(self) -> None:
        self.redis.close()


def measure(engines: list[Any], w: Workload, repeats: int) -> dict[str, Result]:
    """One untimed warm-up per engine, then timed runs alternating between engines."""
    runners = {e.name: e.runner(w) for e in engines}
    results = {name: Result() for name in runners}
    for once in runners.values():
        once()
    for _ in range(repeats):
        for name, once in runners.items():
            results[name].samples.append(once())
    extra = [s.attempts for s in results.get("dagwright", Result()).samples if s.attempts != w.size]
    if extra:  # at-least-once delivery: a step ran more than once (or the count is off)
        print(f"! {w.name}: dagwright recorded {extra} attempts for {w.size} steps")
    return results


# --- sections -----------------------------------------------------------------------------------


class Workers:
    """The workers of one configuration, one per engine; stopped (and their logs checked) by
    ``stop``, which is safe to call more than once."""

    def __init__(self, logdir: Path, env: dict[str, str]) -> None:
        self.logdir, self.env = logdir, env
        self.running: list[Worker] = []

    def start(self, engines: list[Any], pool: str, concurrency: int) -> None:
        for e in engines:
            self.running.append(Worker(e.name.split()[0], pool, concurrency, self.logdir, self.env))
        for wk, e in zip(self.running, engines, strict=True):
            wk.wait_ready(e.app)

    def stop(self) -> None:
        while self.running:
            wk = self.running.pop()
            wk.stop()
            lines = wk.log.read_text(errors="replace").splitlines()
            problems = [
                i
                for i, ln in enumerate(lines)
                if "ERROR" in ln or "Traceback" in ln or "CRITICAL" in ln
            ]
            if problems:  # e.g. Redis restarted under the run: its figures are suspect
                print(f"! worker {wk.name} logged {len(problems)} error line(s); the first:")
                print("\n".join("!   " + ln for ln in lines[problems[0] : problems[0] + 12]))


def bench_chain(engines: list[Any], w: Workload, repeats: int) -> tuple[float, float]:
    """Section 1; returns (dagwright, raw) ms/step."""
    print(
        f"\n## 1. Per-step overhead: {w.name}, prefork concurrency 2 "
        f"(target: dagwright <= {TARGET_OVERHEAD_RATIO} x raw Celery)"
    )
    res = measure(engines, w, repeats)
    header = (
        f"{'engine':<12} {'makespan s':>10} {'ms/step':>8} {'min-max s':>13} "
        f"{'span ms/step':>12} {'client cpu':>10}"
    )
    print(header + "\n" + "-" * len(header))
    for name, r in res.items():
        lo, hi = r.spread
        span = f"{1000 * r.span / w.size:.2f}" if r.span is not None else "-"
        cpu = statistics.median(s.client_cpu / s.makespan for s in r.samples)
        print(
            f"{name:<12} {r.makespan:>10.3f} {1000 * r.makespan / w.size:>8.2f} "
            f"{lo:>6.3f}-{hi:<6.3f} {span:>12} {100 * cpu:>9.0f}%"
        )
    dw, raw = (1000 * res[k].makespan / w.size for k in ("dagwright", "raw celery"))
    print(f"ratio dagwright / raw: {dw / raw:.2f}")
    gaps = engines[0].chain_gaps()
    print(
        "dagwright, last run, median per step: previous step_finished -> attempt_started "
        f"{gaps['hop']:.2f} ms (broker hop, Celery, the worker's trace read and its commit); "
        f"attempt_started -> step_finished {gaps['attempt']:.2f} ms (the no-op tool, its "
        "outcome and the next dispatch, one commit)"
    )
    return dw, raw


def bench_wide(engines: list[Any], w: Workload, repeats: int) -> tuple[float, float]:
    """Section 3; returns (dagwright, raw) steps/s."""
    print(f"\n## 3. Throughput: {w.name} ({w.size} steps), prefork concurrency 2")
    res = measure(engines, w, repeats)
    header = (
        f"{'engine':<12} {'makespan s':>10} {'steps/s':>8} {'min-max s':>13} {'span steps/s':>12}"
    )
    print(header + "\n" + "-" * len(header))
    for name, r in res.items():
        lo, hi = r.spread
        span = f"{w.size / r.span:.0f}" if r.span is not None else "-"
        print(
            f"{name:<12} {r.makespan:>10.3f} {w.size / r.makespan:>8.0f} "
            f"{lo:>6.3f}-{hi:<6.3f} {span:>12}"
        )
    dw, raw = (w.size / res[k].makespan for k in ("dagwright", "raw celery"))
    print(f"dagwright throughput / raw: {dw / raw:.2f}")
    return dw, raw


def bench_dags(
    engines: list[Any], randoms: list[Workload], repeats: int
) -> dict[str, tuple[float, float]]:
    """Section 2; returns {workload: (dagwright ratio, raw ratio)}."""
    print(
        f"\n## 2. Makespan / critical path, random layered DAGs, threads concurrency 64 "
        f"(target: dagwright <= {TARGET_RATIO})"
    )
    header = (
        f"{'workload':<10} {'steps':>5} {'depth':>5} {'crit s':>7} {'engine':<12} "
        f"{'makespan s':>10} {'ratio':>6} {'ms/level':>8} {'span ratio':>10}"
    )
    print(header + "\n" + "-" * len(header))
    ratios: dict[str, tuple[float, float]] = {}
    for w in randoms:
        cp = w.critical_path_s()
        res = measure(engines, w, repeats)
        for name, r in res.items():
            span = f"{r.span / cp:.3f}" if r.span is not None else "-"
            print(
                f"{w.name:<10} {w.size:>5} {w.depth():>5} {cp:>7.3f} {name:<12} "
                f"{r.makespan:>10.3f} {r.makespan / cp:>6.3f} "
                f"{1000 * (r.makespan - cp) / w.depth():>8.1f} {span:>10}",
                flush=True,
            )
        ratios[w.name] = (res["dagwright"].makespan / cp, res["raw celery"].makespan / cp)
        delays = next(e for e in engines if e.name == "dagwright").delays(w)
        print(
            f"{'':<10} dagwright, last run, median per step: last dependency finished -> "
            f"step_scheduled {delays['ready->scheduled']:.1f} ms; -> attempt_started "
            f"{delays['scheduled->started']:.1f} ms; attempt beyond its sleep "
            f"{delays['attempt-sleep']:.1f} ms"
        )
    return ratios


# --- main ---------------------------------------------------------------------------------------


def code_version() -> str:
    """HEAD and a digest of the engine's sources as they are on disk (edits not committed yet
    count): workers import the code when they start, so a change mid-run mixes versions."""
    digest = hashlib.sha256()
    for path in sorted([*ROOT.glob("executors/**/*.py"), *ROOT.glob("tools/*.py")]):
        digest.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes())
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        head = "?"
    return f"HEAD {head}, executors+tools sources sha256 {digest.hexdigest()[:12]}"


def flush(db: int) -> None:
    import redis

    client = redis.Redis.from_url(f"{REDIS}/{db}")
    try:
        client.flushdb()
    finally:
        client.close()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke check")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per figure (median)")
    parser.add_argument(
        "--redis",
        default=None,
        help="the Redis server (default: the server of DAGWRIGHT_BROKER, from the settings)",
    )
    parser.add_argument("--redis-db", type=int, default=13, help="Redis db for dagwright (flushed)")
    parser.add_argument(
        "--raw-redis-db", type=int, default=12, help="Redis db for raw Celery (flushed)"
    )
    parser.add_argument(
        "--poll-ms",
        type=float,
        default=0.0,
        help="poll the trace every N ms instead of waiting for the workers' end-of-run signal",
    )
    args = parser.parse_args(argv)
    if args.redis_db == args.raw_redis_db:
        parser.error("--redis-db and --raw-redis-db must differ")
    return args


def main(argv: list[str] | None = None) -> int:
    global REDIS
    args = parse_args(argv)
    from dagwright.settings import Settings

    REDIS = redis_server(args.redis or Settings.from_env().broker)
    repeats = args.repeats or (2 if args.quick else 3)
    chain_repeats = args.repeats or (2 if args.quick else 5)

    tmp = Path(tempfile.mkdtemp(prefix="celerybench-"))
    db = str(tmp / "trace.db")
    # The workers (subprocesses) read their settings from the environment (dagwright.worker);
    # this client builds its app from explicit Settings.
    for k in [k for k in os.environ if k.startswith("DAGWRIGHT_") and "_TEST_" not in k]:
        del os.environ[k]
    os.environ["DAGWRIGHT_DB"] = db
    os.environ["DAGWRIGHT_BROKER"] = f"{REDIS}/{args.redis_db}"
    os.environ["RAWBENCH_BROKER"] = f"{REDIS}/{args.raw_redis_db}"

    n_chain, width = (50, 100) if args.quick else (100, 300)
    noop_chain = chain(n_chain, 0, name=f"noop-chain-{n_chain}", kind="noop")
    wide = fan(width, 0)
    wide.name, wide.note = f"wide-{width}-noop", f"1 root -> {width} no-op steps -> 1 sink"
    randoms = (
        [layered(1, (30, 40), (4, 6))]
        if args.quick
        else [layered(s, (60, 100), (6, 10)) for s in (1, 2, 3)]
    )

    print(
        f"# dagwright Celery benchmark  ({date.today()}, Python {platform.python_version()}, "
        f"celery {version('celery')}, redis-py {version('redis')}, {os.cpu_count()} CPUs, "
        f"{'quick' if args.quick else 'full'}, median of {repeats} ({chain_repeats} for the chain))"
    )
    code = code_version()
    print(f"code: {code}")
    print(
        f"trace store: {db}; brokers: {REDIS}/{args.redis_db} (dagwright), "
        f"{REDIS}/{args.raw_redis_db} (raw)"
    )

    workers = Workers(tmp, dict(os.environ))
    # `kill` (SIGTERM) ends the benchmark through the `finally` below, which stops the workers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    engines: list[Any] = []
    wall0 = time.perf_counter()
    try:
        flush(args.redis_db)
        flush(args.raw_redis_db)
        broker = os.environ["DAGWRIGHT_BROKER"]
        engines = [Dagwright(broker, db, args.poll_ms / 1000), RawCelery()]

        workers.start(engines, "prefork", 2)
        dw_step, raw_step = bench_chain(engines, noop_chain, chain_repeats)
        dw_tput, raw_tput = bench_wide(engines, wide, repeats)
        workers.stop()

        workers.start(engines, "threads", 64)
        ratios = bench_dags(engines, randoms, repeats)
        workers.stop()

        print("\n## Targets")
        ratio = dw_step / raw_step
        print(
            f"- per-step overhead <= {TARGET_OVERHEAD_RATIO} x raw Celery ({noop_chain.name}): "
            f"dagwright {dw_step:.2f} ms/step, raw {raw_step:.2f} ms/step, ratio {ratio:.2f} -> "
            f"{'MET' if ratio <= TARGET_OVERHEAD_RATIO else 'MISSED'}"
        )
        worst = max(dw for dw, _ in ratios.values())
        print(
            f"- makespan <= {TARGET_RATIO} x critical path (random DAGs, threads 64): dagwright "
            + ", ".join(f"{dw:.3f}" for dw, _ in ratios.values())
            + f" (raw Celery {', '.join(f'{raw:.3f}' for _, raw in ratios.values())}) -> "
            f"{'MET' if worst <= TARGET_RATIO else 'MISSED'}"
        )
        print(
            f"- throughput ({wide.name}, prefork 2): dagwright {dw_tput:.0f} steps/s, "
            f"raw Celery {raw_tput:.0f} steps/s (no target)"
        )
        print(f"\n(wall time {time.perf_counter() - wall0:.0f} s)")
        if code_version() != code:
            print(f"! the engine's sources changed during the run (now {code_version()}):")
            print("! workers started at different times ran different code; run again")
    finally:
        workers.stop()
        for e in engines:
            e.close()
        for n in (args.redis_db, args.raw_redis_db):
            try:
                flush(n)
            except Exception as exc:  # noqa: BLE001 - report, keep cleaning up
                print(f"! could not flush redis db {n}: {exc}")
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
