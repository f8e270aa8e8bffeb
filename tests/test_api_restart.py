"""The API server killed (SIGKILL) while runs are in flight, then started again on the same trace
store: every accepted run finishes, and nothing is done twice. Attempts that were running are
found lost by the sweeper (DAGWRIGHT_HEARTBEAT=0.5 in apitools) and sent again; dispatches that
were queued are sent again when the server starts."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import httpx
from apitools import Server, wait_final

SLOW = """\
name: slow
steps:
  - id: a
    uses: sleep
    with: {ms: 1500}
  - id: b
    uses: sleep
    needs: [a]
    with: {ms: 200}
  - id: c
    uses: echo
    needs: [b]
    with: {slept: "${{ steps.b.output.slept_ms }}"}
output: ${{ steps.c.output }}
"""


def started(client: httpx.Client, run_id: str) -> bool:
    trace = client.get(f"/v1/runs/{run_id}/events").json()["events"]
    return any(e["type"] == "attempt_started" for e in trace)


def test_runs_in_flight_when_the_server_is_killed_finish_after_a_restart(
    tmp_path: Path,
) -> None:
    server = Server(tmp_path, DAGWRIGHT_API_RUNS="3").start()
    try:
        with server.client() as client:
            ids = []
            for _ in range(5):  # more runs than threads: some attempts run, some wait
                accepted = client.post("/v1/runs", json={"workflow_yaml": SLOW})
                assert accepted.status_code == 202, accepted.text
                ids.append(accepted.json()["run_id"])
            while sum(started(client, r) for r in ids) < 3:
                time.sleep(0.05)
        server.kill()
        server.start()
        lost = 0
        with server.client() as client:
            for run_id in ids:
                run = wait_final(client, run_id, timeout=90)
                assert run["status"] == "succeeded", (run_id, run["error"])
                assert run["output"] == {"slept": 200}
                trace = client.get(f"/v1/runs/{run_id}/events").json()["events"]
                types = Counter(e["type"] for e in trace)
                assert types["run_finished"] == 1 and trace[-1]["type"] == "run_finished"
                assert [e["seq"] for e in trace] == list(range(1, len(trace) + 1))
                succeeded = Counter(
                    e["step"] for e in trace
                    if e["type"] == "attempt_finished" and e["data"]["status"] == "succeeded"
                )  # fmt: skip
                assert succeeded == {"a": 1, "b": 1, "c": 1}, "no step succeeded twice"
                finished = Counter(e["step"] for e in trace if e["type"] == "step_finished")
                assert finished == {"a": 1, "b": 1, "c": 1}
                began = {e["data"]["attempt_id"] for e in trace if e["type"] == "attempt_started"}
                ended = {e["data"]["attempt_id"] for e in trace if e["type"] == "attempt_finished"}
                lost += len(began - ended)
            assert lost >= 1, "attempts were running when the server was killed, and ran again"
            listed = client.get("/v1/runs", params={"workflow": "slow"}).json()["runs"]
            assert {r["run_id"] for r in listed} == set(ids)
            assert {r["status"] for r in listed} == {"succeeded"}
    finally:
        server.stop()
