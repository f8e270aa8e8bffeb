"""dagwright start-up benchmark: how long the command line takes before it does any work.

Run from the repository root::

    .venv/bin/python bench/startup_bench.py              # 10 runs of each command
    .venv/bin/python bench/startup_bench.py --repeats 20

Each command runs in a fresh subprocess, once untimed (to warm the disk cache and the bytecode
cache), then ``--repeats`` times timed. Figures: the median and the best wall time, each also
minus ``python -c pass``'s (the interpreter's own start-up), i.e. what dagwright adds; on a busy
machine the best is the steadier of the two. The commands:

- ``python -c pass``: the floor
- ``python -c "import dagwright.cli.main"``: building the command line
- ``dagwright --help``
- ``dagwright validate workflows/examples/quickstart.yaml``
- ``dagwright run`` of a 1-step ``echo`` workflow, with ``--db`` in a temporary directory

Then each command runs once more with ``PYTHONPROFILEIMPORTTIME=1`` (Python's ``-X importtime``)
to list the heavy libraries it loaded, with their cumulative import time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
DAGWRIGHT = str(Path(sys.executable).parent / "dagwright")

HEAVY = [
    "celery",
    "kombu",
    "redis",
    "sqlalchemy",
    "psycopg",
    "instructor",
    "openai",
    "httpx",
    "networkx",
    "jsonschema",
    "yaml",
    "pydantic",
]
"""Libraries worth naming when a command loads them (the first eight a plain CLI call never
needs; networkx, jsonschema, yaml and pydantic are needed to validate a workflow)."""

ONE_STEP = """\
name: one-step
steps:
  - id: hello
    uses: echo
    with: {text: hi}
"""


def commands(tmp: Path) -> list[tuple[str, list[str]]]:
    workflow = tmp / "one.yaml"
    workflow.write_text(ONE_STEP, encoding="utf-8")
    db = str(tmp / "trace.db")
    return [
        ("python -c pass", [PYTHON, "-c", "pass"]),
        ("import dagwright.cli.main", [PYTHON, "-c", "import dagwright.cli.main"]),
        ("dagwright --help", [DAGWRIGHT, "--help"]),
        (
            "dagwright validate quickstart.yaml",
            [DAGWRIGHT, "validate", "workflows/examples/quickstart.yaml"],
        ),
        ("dagwright run (1 echo step)", [DAGWRIGHT, "run", str(workflow), "--db", db]),
    ]


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DAGWRIGHT_")}
    env.pop("PYTHONPROFILEIMPORTTIME", None)
    env["NO_COLOR"] = "1"
    return env


def timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True)
    took = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {done.returncode}:\n{done.stderr}")
    return took


def heavy_loaded(argv: list[str], env: dict[str, str]) -> dict[str, float]:
    """{library: cumulative import time in ms} for the HEAVY libraries the command loaded."""
    done = subprocess.run(
        argv, cwd=ROOT, env=env | {"PYTHONPROFILEIMPORTTIME": "1"}, capture_output=True, text=True
    )
    loaded: dict[str, float] = {}
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = line.split("|")
        name = name.strip()
        if name in HEAVY and name not in loaded and cumulative.strip().isdigit():
            loaded[name] = int(cumulative) / 1000
    return loaded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per command")
    args = parser.parse_args()
    env = environment()
    with tempfile.TemporaryDirectory(prefix="dagwright-startup-") as tmp:
        rows = []
        for label, argv in commands(Path(tmp)):
            timed(argv, env)  # warm-up
            times = [timed(argv, env) for _ in range(args.repeats)]
            rows.append((label, statistics.median(times), min(times), heavy_loaded(argv, env)))
    floor, best_floor = rows[0][1], rows[0][2]
    print(f"Python {sys.version.split()[0]}, {args.repeats} runs per command (ms)\n")
    print(
        f"{'command':<36} {'median':>7} {'- python':>9} {'best':>6} {'- python':>9}"
        "  heavy libraries loaded (import ms)"
    )
    for label, median, best, loaded in rows:
        heavy = ", ".join(f"{n} {ms:.0f}" for n, ms in loaded.items()) or "none"
        print(
            f"{label:<36} {median * 1000:7.0f} {(median - floor) * 1000:9.0f}"
            f" {best * 1000:6.0f} {(best - best_floor) * 1000:9.0f}  {heavy}"
        )


if __name__ == "__main__":
    main()
