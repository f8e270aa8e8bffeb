"""The queue API under load: N submissions from C concurrent clients through ``dagwright serve``.

Run from the repository root (PostgreSQL at 127.0.0.1:5432, trust auth, database ``test``;
``redis-server`` on PATH)::

    .venv/bin/python bench/api_bench.py                      # celery: 2 workers, PostgreSQL
    .venv/bin/python bench/api_bench.py --executor local     # the embedded default, SQLite
    .venv/bin/python bench/api_bench.py --profile            # + cProfile of service.submit

What it starts (and stops at the end, also on errors), all on this machine:

- ``--executor celery``: its own ``redis-server`` on a free port (the broker), a fresh schema
  in PostgreSQL (the trace store, dropped at the end), ``--workers`` Celery workers
  (``celery -A dagwright.worker worker --concurrency=--concurrency``), and
  ``dagwright serve --executor celery``.
- ``--executor local``: ``dagwright serve --executor local`` on a fresh SQLite file: runs on
  the server's own threads (DAGWRIGHT_API_RUNS, default 4).

The per-caller rate limit is lifted (DAGWRIGHT_API_RATE/BURST) so that it is not what is
measured. The load: ``--clients`` threads, each with its own keep-alive connection
(``http.client``), take the ``--n`` submissions from one queue; each is
``POST /v1/runs`` of a 2-step inline ``echo`` workflow (``--known``: the same workflow by name)
with its own inputs. Figures:

- submissions/s: accepted (202) submissions / the wall time from the first send to the last
  answer; p50/p99 submit latency: per request, from send to answer, as the client sees it.
- time to the last run's end: from the first send to the latest ``finished_at`` in the trace.
- lost: accepted runs not ended (or not recorded at all) within ``--drain`` seconds after the
  last answer; the statuses of the others are printed (all ``succeeded`` expected).
- duplicated: runs with two ``run_finished`` events, or a step with two succeeded attempts.
- CPU seconds per process group during the load (server, workers, redis, PostgreSQL, this
  client), read from /proc: on a 2-core machine they share the same two cores.
"""

from __future__ import annotations

import argparse
import cProfile
import http.client
import io
import json
import os
import pstats
import queue
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
PG = "postgresql://postgres@127.0.0.1:5432/test"
WORKFLOW = """\
name: bench-echo
inputs:
  i: {type: integer}
steps:
  - id: a
    uses: echo
    with: {i: "${{ inputs.i }}"}
  - id: b
    uses: echo
    needs: [a]
    with: {twice: "${{ steps.a.output.i }}"}
output: ${{ steps.b.output }}
"""
SUBMIT_HEADERS = {"Content-Type": "application/json"}
FINAL = {"succeeded", "failed", "cancelled", "abandoned"}
DB_CALLS = {  # what the profile counts, per driver: psycopg 3 (PostgreSQL), sqlite3
    "SQL statements": {
        "psycopg/cursor.py:execute",
        "<method 'execute' of 'sqlite3.Cursor' objects>",
    },
    "commits": {
        "psycopg/connection.py:commit",
        "<method 'commit' of 'sqlite3.Connection' objects>",
    },
    "rollbacks": {
        "psycopg/connection.py:rollback",
        "<method 'rollback' of 'sqlite3.Connection' objects>",
    },
    "pool checkouts": {"pool/base.py:_checkout"},
    "pre-pings": {"engine/default.py:do_ping", "postgresql/_psycopg_common.py:do_ping"},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    """A subprocess in a session of its own (its children share its process group)."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], logdir: Path) -> None:
        self.name, self.log = name, logdir / f"{name}.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])

    def wait_for(self, ready: Any, what: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited:\n{self.tail()}")
            if ready():
                return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name}: {what} not after {timeout:g}s:\n{self.tail()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)  # a warm shutdown by the main process
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # pool children that outlived it
        except ProcessLookupError:
            pass
        self.proc.wait(10)


def cpu_seconds(pgid: int | None = None, comm: str | None = None) -> float:
    """user+system CPU seconds of the live processes of a process group (or named ``comm``)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        name = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2 :].split()
        if (pgid is not None and int(fields[2]) == pgid) or (comm is not None and name == comm):
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


class Stack:
    """What one benchmark run starts: broker, store, workers, server."""

    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args, self.tmp = args, tmp
        self.procs: list[Proc] = []
        self.schema: str | None = None
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("DAGWRIGHT_")}
        self.env.update({
            "DAGWRIGHT_API_RATE": "1000000", "DAGWRIGHT_API_BURST": "1000000",
            "DAGWRIGHT_WORKFLOWS": str(tmp / "workflows"),
        })  # fmt: skip
        (tmp / "workflows").mkdir()
        (tmp / "workflows" / "bench-echo.yaml").write_text(WORKFLOW)

    def start(self) -> str:
        if self.args.executor == "celery":
            self._redis()
            self._postgres()
            if not self.args.late_workers:
                self.start_workers()
        else:
            self.env["DAGWRIGHT_DB"] = str(self.tmp / "trace.db")
        return self._server()

    def _redis(self) -> None:
        port = free_port()
        redis = Proc("redis", [shutil.which("redis-server") or "redis-server", "--port", str(port),
                                "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                     self.env, self.tmp)  # fmt: skip
        self.procs.append(redis)
        import redis as redis_py

        client = redis_py.Redis(port=port, socket_connect_timeout=0.5)

        def pong() -> bool:
            try:
                return bool(client.ping())
            except redis_py.ConnectionError:
                return False

        redis.wait_for(pong, "PONG")
        client.close()
        self.env["DAGWRIGHT_BROKER"] = f"redis://127.0.0.1:{port}/0"

    def _postgres(self) -> None:
        import psycopg

        self.schema = f"bench_api_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(self.args.pg, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{self.schema}"')
        sep = "&" if "?" in self.args.pg else "?"
        self.env["DAGWRIGHT_DB"] = f"{self.args.pg}{sep}options=-csearch_path%3D{self.schema}"

    def start_workers(self) -> None:
        for n in range(self.args.workers):
            self._worker(n)

    def _worker(self, n: int) -> None:
        name = f"worker{n}"
        nice = ["nice", "-n", str(self.args.worker_nice)] if self.args.worker_nice else []
        cmd = [*nice, sys.executable, "-m", "celery", "-A", "dagwright.worker", "worker",
               f"--concurrency={self.args.concurrency}", "--pool=prefork", "--loglevel=INFO",
               f"--hostname=bench{n}-{uuid.uuid4().hex[:6]}@%h",
               "--without-gossip", "--without-mingle"]  # fmt: skip
        worker = Proc(name, cmd, self.env, self.tmp)
        self.procs.append(worker)
        worker.wait_for(lambda: b"ready." in worker.log.read_bytes(), "ready", 90)

    def _server(self) -> str:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-c", "from dagwright.cli.main import main; main()", "serve",
               "--port", str(port), "--executor", self.args.executor,
               "--workers", str(self.args.server_processes),
               "--log-level", "warning"]  # fmt: skip
        server = Proc("server", cmd, self.env, self.tmp)
        self.procs.append(server)

        def healthy() -> bool:
            try:
                return httpx.get(url + "/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        server.wait_for(healthy, "/healthz")
        return url

    def cpu(self) -> dict[str, float]:
        out = {p.name: cpu_seconds(pgid=p.proc.pid) for p in self.procs if p.proc.poll() is None}
        if self.args.executor == "celery":
            out["postgres"] = cpu_seconds(comm="postgres")
        usage = resource.getrusage(resource.RUSAGE_SELF)
        out["client"] = usage.ru_utime + usage.ru_stime
        return out

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop()
        if self.schema is not None:
            import psycopg

            with psycopg.connect(self.args.pg, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA "{self.schema}" CASCADE')


def body(i: int, known: bool) -> dict[str, Any]:
    if known:
        return {"workflow": "bench-echo", "inputs": {"i": i}}
    return {"workflow_yaml": WORKFLOW, "inputs": {"i": i}}


def load(url: str, n: int, clients: int, known: bool, rate: float | None = None) -> dict[str, Any]:
    """``n`` submissions from ``clients`` concurrent clients; latencies, statuses, run ids.

    Closed loop (``rate`` None): each client sends its next submission when the last one is
    answered, as fast as the server answers. Open loop (``rate``: submissions per second): the
    i-th submission is due at ``i / rate`` seconds, whoever sends it; its latency counts from
    when it was due, so time spent waiting for a free client (a slow server) is counted too.

    Each client is a thread with its own keep-alive connection (``http.client``): a light
    client, so that on 2 cores the load generator takes little of the CPU it measures
    (``httpx.AsyncClient`` with 50 connections spent about 5 ms of CPU per request here,
    ``http.client`` 0.25 ms)."""
    host, port = url.removeprefix("http://").split(":")
    pending: queue.SimpleQueue[int] = queue.SimpleQueue()
    for i in range(n):
        pending.put(i)
    latencies: list[float] = []
    statuses: Counter[int | str] = Counter()
    run_ids: list[str] = []
    errors: list[str] = []
    lock = threading.Lock()

    def one_client() -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=120)
        try:
            while True:
                try:
                    i = pending.get_nowait()
                except queue.Empty:
                    return
                payload = json.dumps(body(i, known)).encode()
                sent = time.perf_counter()
                if rate is not None:
                    due = started + i / rate
                    if due > sent:
                        time.sleep(due - sent)
                    sent = due
                try:
                    conn.request("POST", "/v1/runs", payload, SUBMIT_HEADERS)
                    response = conn.getresponse()
                    answer = response.read()
                except (OSError, http.client.HTTPException) as exc:  # counted, not retried
                    with lock:
                        statuses[type(exc).__name__] += 1
                        errors.append(f"{time.perf_counter() - started:.2f}s: {exc!r}")
                    conn.close()
                    conn = http.client.HTTPConnection(host, int(port), timeout=120)
                    continue
                took = time.perf_counter() - sent
                with lock:
                    latencies.append(took)
                    statuses[response.status] += 1
                    if response.status == 202:
                        run_ids.append(json.loads(answer)["run_id"])
        finally:
            conn.close()

    threads = [threading.Thread(target=one_client) for _ in range(clients)]
    started, wall = time.perf_counter(), time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    return {"latencies": latencies, "statuses": statuses, "run_ids": run_ids,
            "elapsed": elapsed, "started_at": wall, "errors": errors}  # fmt: skip


def drain(db: str, run_ids: list[str], timeout: float) -> dict[str, Any]:
    """Wait until every accepted run has ended (or ``timeout``); lost and duplicated runs."""
    from dagwright.executors.store import open_store

    store = open_store(db)
    try:
        deadline = time.monotonic() + timeout
        while True:
            listed = {s.record.run_id: s for s in store.list_runs(limit=len(run_ids) + 100)}
            open_runs = [r for r in run_ids if r not in listed or listed[r].status not in FINAL]
            if not open_runs or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        statuses = Counter(listed[r].status if r in listed else "missing" for r in run_ids)
        duplicated = []
        for run_id in run_ids:
            events = store.events(run_id)
            ends = sum(e.type == "run_finished" for e in events)
            succeeded = Counter(e.step for e in events if e.type == "attempt_finished"
                                and (e.data or {}).get("status") == "succeeded")  # fmt: skip
            if ends > 1 or any(c > 1 for c in succeeded.values()):
                duplicated.append(run_id)
        ends_at = [listed[r].finished_at for r in run_ids if r in listed and listed[r].finished_at]
        ended = sum(n for status, n in statuses.items() if status in FINAL)
        return {"statuses": statuses, "lost": len(run_ids) - ended,
                "duplicated": duplicated, "last_end": max(ends_at, default=None)}  # fmt: skip
    finally:
        store.close()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def profile_submit(args: argparse.Namespace, stack: Stack, count: int = 200) -> None:
    """Where one submission's time goes: ``RunService.submit`` called in this process over
    the same store and broker (no HTTP), timed by phase, its SQL counted, then cProfiled."""

    from dagwright.api.runtimes import open_service
    from dagwright.api.schemas import SubmitRun
    from dagwright.settings import Settings

    env = {k: v for k, v in stack.env.items() if k.startswith("DAGWRIGHT_")}
    settings = Settings.from_env(env)
    if args.executor == "local":  # a store of its own: the server holds the SQLite file
        settings = settings.model_copy(update={"db": str(stack.tmp / "profile.db")})
    service = open_service(settings, executor=args.executor)
    phases: Counter[str] = Counter()

    def timed(name: str, fn: Any) -> Any:
        def wrapper(*a: Any, **kw: Any) -> Any:
            started = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                phases[name] += time.perf_counter() - started

        return wrapper

    service._ready = timed("validate (_ready: parse, prepare)", service._ready)  # type: ignore[method-assign]
    service.engine.start = timed("record + dispatch (engine.start)", service.engine.start)  # type: ignore[method-assign]
    service.runtime.send = timed("enqueue (runtime.send)", service.runtime.send)  # type: ignore[method-assign]
    service._status = timed("read back status (_status)", service._status)  # type: ignore[method-assign]
    try:
        for i in range(20):  # warm: imports, connections, caches
            service.submit(SubmitRun(**body(10_000 + i, args.known)), None)
        phases.clear()
        started, cpu = time.perf_counter(), time.process_time()
        for i in range(count):
            service.submit(SubmitRun(**body(20_000 + i, args.known)), None)
        per = (time.perf_counter() - started) / count * 1000
        cpu_per = (time.process_time() - cpu) / count * 1000
        timed_phases = dict(phases)
        profiler = cProfile.Profile()
        profiler.enable()
        for i in range(count):
            service.submit(SubmitRun(**body(30_000 + i, args.known)), None)
        profiler.disable()
    finally:
        service.close()
    print(f"\n## RunService.submit in this process, {count} sequential calls, no HTTP: "
          f"{per:.2f} ms each, {cpu_per:.2f} ms of CPU")  # fmt: skip
    for name, total in sorted(timed_phases.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<36} {total / count * 1000:6.2f} ms")
    stats = pstats.Stats(profiler)
    calls = Counter[str]()
    for (file, _line, func), (_cc, ncalls, *_rest) in stats.stats.items():  # type: ignore[attr-defined]
        where = f"{Path(file).parent.name}/{Path(file).name}:{func}"
        for label, names in DB_CALLS.items():
            if where in names or func in names:
                calls[label] += ncalls
    print("  per submission: " + ", ".join(f"{v / count:.1f} {k}" for k, v in calls.items()))
    for key in ("cumulative", "tottime"):
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).strip_dirs().sort_stats(key).print_stats(
            args.profile_lines
        )
        print(f"\n### cProfile by {key} ({count} calls)\n" + text.getvalue().split("\n", 6)[-1])


def report(args: argparse.Namespace, loaded: dict[str, Any], drained: dict[str, Any],
           cpu: dict[str, float], total: dict[str, float]) -> None:  # fmt: skip
    lat = [v * 1000 for v in loaded["latencies"]]
    accepted = len(loaded["run_ids"])
    end = drained["last_end"]
    print(f"\n## {args.executor}: {args.n} submissions, {args.clients} clients"
          + (f", {args.workers} workers x {args.concurrency}" if args.executor == "celery"
             else "") + (", known workflow" if args.known else ", inline workflow")
          + (f", open loop at {args.rate:g}/s" if args.rate else ", closed loop")
          + (", workers started after the load" if args.late_workers else "")
          + (f", workers at nice {args.worker_nice}" if args.worker_nice else ""))  # fmt: skip
    print(f"answers:                {dict(loaded['statuses'])}")
    for line in loaded["errors"][:5]:
        print(f"  transport error at {line}")
    print(f"submissions/s:          {accepted / loaded['elapsed']:.1f}  "
          f"({accepted} accepted in {loaded['elapsed']:.2f} s)")  # fmt: skip
    print(f"submit latency:         p50 {pct(lat, 0.5):.1f} ms, p90 {pct(lat, 0.9):.1f} ms, "
          f"p99 {pct(lat, 0.99):.1f} ms, max {max(lat):.1f} ms, "
          f"mean {statistics.fmean(lat):.1f} ms")  # fmt: skip
    if end is not None:
        print(f"time to last run's end: {end - loaded['started_at']:.2f} s after the first send")
    print(f"run statuses:           {dict(drained['statuses'])}")
    print(f"lost:                   {drained['lost']}")
    print(f"duplicated:             {len(drained['duplicated'])}")
    print("CPU s during the load:  " + ", ".join(f"{k} {v:.1f}" for k, v in cpu.items()))
    n = max(1, len(loaded["run_ids"]))
    print("CPU ms per run, load to last end: "
          + ", ".join(f"{k} {v / n * 1000:.2f}" for k, v in total.items()))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--executor", choices=["celery", "local"], default="celery")
    parser.add_argument("--n", type=int, default=1000, help="submissions (default 1000)")
    parser.add_argument("--clients", type=int, default=50, help="concurrent clients (50)")
    parser.add_argument("--workers", type=int, default=2, help="Celery workers (2)")
    parser.add_argument("--concurrency", type=int, default=2, help="processes per worker (2)")
    parser.add_argument("--known", action="store_true", help="submit by name, not inline YAML")
    parser.add_argument(
        "--server-processes",
        type=int,
        default=1,
        help="dagwright serve --workers N (celery only; default 1)",
    )
    parser.add_argument("--late-workers", action="store_true",
                        help="start the workers after the submissions (the API alone)")  # fmt: skip
    parser.add_argument("--rate", type=float, default=None,
                        help="open loop: submissions per second, latency from when each was "
                             "due (default: closed loop, as fast as answered)")  # fmt: skip
    parser.add_argument(
        "--worker-nice",
        type=int,
        default=0,
        help="start the workers under nice -n N (the server keeps priority)",
    )
    parser.add_argument("--warmup", type=int, default=20, help="untimed submissions first")
    parser.add_argument("--drain", type=float, default=300.0, help="seconds to wait for ends")
    parser.add_argument("--pg", default=PG, help=f"PostgreSQL URL (default {PG})")
    parser.add_argument("--profile", action="store_true", help="cProfile service.submit")
    parser.add_argument("--profile-lines", type=int, default=25)
    args = parser.parse_args()
    # a SIGTERM (timeout, kill) stops what the benchmark started too, as an error does
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    with tempfile.TemporaryDirectory(prefix="dagwright-api-bench-") as folder:
        stack = Stack(args, Path(folder))
        try:
            url = stack.start()
            if args.warmup:
                load(url, args.warmup, min(args.clients, args.warmup), args.known)
            before = stack.cpu()
            loaded = load(url, args.n, args.clients, args.known, args.rate)
            after = stack.cpu()
            if args.late_workers and args.executor == "celery":
                stack.start_workers()
            drained = drain(stack.env["DAGWRIGHT_DB"], loaded["run_ids"], args.drain)
            ended = stack.cpu()
            ended.pop("client", None)  # the client's own CPU includes the drain's polling
            report(args, loaded, drained, {k: after[k] - before.get(k, 0.0) for k in after},
                   {k: ended[k] - before.get(k, 0.0) for k in ended})  # fmt: skip
            if args.profile:
                profile_submit(args, stack)
        except BaseException:
            for p in stack.procs:
                print(f"--- {p.name} log (tail):\n{p.tail()}", file=sys.stderr)
            raise
        finally:
            stack.stop()


if __name__ == "__main__":
    main()
