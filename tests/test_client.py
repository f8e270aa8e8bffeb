"""``dagwright.client`` and the CLI's ``submit``, ``status`` and ``follow``.

The client is tested against a TEST DOUBLE of the queue API (tests/fake_api.py: the contract of
docs/api.md in memory, served through ``httpx.MockTransport``, or on a real socket for the CLI
in a subprocess), which can drop a stream mid-message, answer 429, or refuse a workflow; one test
makes the same calls against a real `dagwright serve` (the server itself is tested in
test_api.py). ``status --db`` and ``follow --db`` read runs recorded by the local executor
(`dagwright run`), as users do.
"""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from clitools import DAGWRIGHT, REPO, as_json, cli
from fake_api import FakeApi, served

import dagwright._client_wire as wire
import dagwright.client as client_module
from dagwright.client import FINAL, ApiError, AsyncClient, Client, RateLimited

URL = "http://api.test"


def client(fake: FakeApi, token: str | None = None) -> tuple[Client, list[float]]:
    """A client of ``fake`` whose pauses are recorded, not slept."""
    api = Client(URL, token, transport=httpx.MockTransport(fake))
    pauses: list[float] = []
    api._sleep = pauses.append  # type: ignore[method-assign]
    return api, pauses


def seqs(events: list[dict[str, Any]]) -> list[int]:
    return [e["seq"] for e in events]


# -- requests and errors -------------------------------------------------------------------------


def test_submit_sends_the_body_token_and_idempotency_key() -> None:
    fake = FakeApi(token="s3cret")
    api, _ = client(fake, "s3cret")
    first = api.submit("hello", inputs={"n": 3}, priority=5, idempotency_key="k-1")
    assert first["status"] == "running" and first["links"]["stream"].endswith("/stream")
    sent = fake.requests[-1]
    assert (sent.method, sent.url.path) == ("POST", "/v1/runs")
    assert sent.headers["authorization"] == "Bearer s3cret"
    assert sent.headers["idempotency-key"] == "k-1"
    assert json.loads(sent.content) == {"workflow": "hello", "inputs": {"n": 3}, "priority": 5}
    again = api.submit("hello", inputs={"n": 3}, priority=5, idempotency_key="k-1")
    assert again["run_id"] == first["run_id"] and len(fake.runs) == 1
    with pytest.raises(ApiError) as reused:
        api.submit("hello", inputs={"n": 4}, priority=5, idempotency_key="k-1")
    assert reused.value.status == 409 and first["run_id"] in reused.value.detail
    assert "idempotency-key" not in api.submit("hello", inputs={"n": 1}) and len(fake.runs) == 2
    assert "idempotency-key" not in fake.requests[-1].headers
    with pytest.raises(ValueError, match="exactly one"):
        api.submit("hello", task="both")


def test_a_problem_document_becomes_an_api_error_with_its_located_problems() -> None:
    api, _ = client(FakeApi())
    with pytest.raises(ApiError) as caught:
        api.submit(workflow_yaml="name: x\nsteps:\n  - id: a\n    uses: nope\n")
    exc = caught.value
    assert (exc.status, exc.title) == (422, "Invalid workflow")
    assert exc.errors[0]["line"] == 4 and exc.errors[0]["step"] == "b"
    assert str(exc).splitlines() == [
        "422 Invalid workflow: 1 problem: nothing was run or recorded",
        "  <workflow_yaml>:4, step 'b', field 'uses': unknown tool 'nope' "
        "(registered tools: echo, sleep)",
    ]
    with pytest.raises(ApiError) as missing:
        api.get("nope")
    assert missing.value.status == 404 and str(missing.value) == (
        "404 Run not found: no run 'nope' in this trace store"
    )
    with pytest.raises(ApiError) as unauthorized:
        client(FakeApi(token="s3cret"))[0].get("x")
    assert unauthorized.value.status == 401 and not isinstance(unauthorized.value, RateLimited)


def test_an_error_that_is_no_problem_document_still_reads_well() -> None:
    page = httpx.MockTransport(lambda r: httpx.Response(502, text="<html>Bad gateway</html>"))
    with Client(URL, transport=page) as api, pytest.raises(ApiError) as caught:
        api.get("abc")
    assert caught.value.status == 502 and str(caught.value) == (
        "502 Bad Gateway: <html>Bad gateway</html>"
    )


def test_429_raises_rate_limited_with_retry_after() -> None:
    fake = FakeApi()
    fake.limited = 1
    api, _ = client(fake)
    with pytest.raises(RateLimited) as caught:
        api.submit("hello", inputs={"n": 1})
    assert caught.value.status == 429 and caught.value.retry_after == 3.0
    assert isinstance(caught.value, ApiError) and not fake.runs
    copy = pickle.loads(pickle.dumps(caught.value))
    assert (type(copy), copy.retry_after, str(copy)) == (RateLimited, 3.0, str(caught.value))
    assert api.submit("hello", inputs={"n": 1})["status"] == "running"


def test_list_follows_next_cursor_page_by_page() -> None:
    fake = FakeApi()
    ids = [fake.add_run(final="succeeded", status="succeeded") for _ in range(7)]
    fake.add_run(status="failed")
    api, _ = client(fake)
    runs = list(api.list(status="succeeded", limit=3))
    assert [r["run_id"] for r in runs] == ids[::-1]
    pages = [r for r in fake.requests if r.url.path == "/v1/runs"]
    assert [r.url.params.get("cursor") for r in pages] == [None, "c3", "c6"]
    assert {r.url.params["status"] for r in pages} == {"succeeded"}
    assert {r.url.params["limit"] for r in pages} == {"3"}
    first = next(iter(api.list(limit=2)))
    assert first["status"] == "failed" and len(fake.requests) == 4, "one page, fetched lazily"


def test_events_are_read_page_by_page(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_module, "EVENTS_PAGE", 4)
    fake = FakeApi()
    run_id = fake.add_run()
    api, _ = client(fake)
    assert seqs(api.events(run_id)) == list(range(1, 12))
    assert seqs(api.events(run_id, after=9)) == [10, 11]
    afters = [r.url.params["after"] for r in fake.requests]
    assert afters == ["0", "4", "8", "9"]


def test_paths_quote_run_ids_and_bodies_follow_the_contract() -> None:
    fake = FakeApi()
    api, _ = client(fake)
    with pytest.raises(ApiError):
        api.get("../v1/workflows")
    assert fake.requests[-1].url.raw_path == b"/v1/runs/..%2Fv1%2Fworkflows"
    seen: list[httpx.Request] = []

    def echo(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(202, json={"run_id": "r2", "status": "running", "links": {}})

    with Client(URL, transport=httpx.MockTransport(echo)) as api2:
        api2.fork("r1", sets={"steps.a.with.n": 3, "inputs.who": "7"}, from_steps=["a"])
        api2.fork("r1", sets=["steps.a.with.n=3"])
        api2.resume("r1", workflow_yaml="name: x", from_steps=["b"], inputs={"n": 2})
        api2.diff("r1", "r2")
    bodies = [json.loads(r.content) if r.content else None for r in seen]
    assert bodies[0] == {"set": ["steps.a.with.n=3", 'inputs.who="7"'], "from": ["a"]}
    assert bodies[1] == {"set": ["steps.a.with.n=3"], "from": []}
    assert bodies[2] == {"from": ["b"], "inputs": {"n": 2}, "workflow_yaml": "name: x"}
    assert [r.url.path for r in seen] == [
        "/v1/runs/r1/fork", "/v1/runs/r1/fork", "/v1/runs/r1/resume", "/v1/runs/r1/diff/r2",
    ]  # fmt: skip


# -- the stream ----------------------------------------------------------------------------------


def test_stream_reconnects_with_last_event_id_and_loses_or_repeats_nothing() -> None:
    fake = FakeApi()
    run_id = fake.add_run()  # 11 events
    fake.cuts = [(3, "drop"), (0, "drop"), (2, "drop")]  # then the rest
    api, pauses = client(fake)
    events = list(api.stream(run_id))
    assert seqs(events) == list(range(1, 12))
    assert events[-1]["type"] == "run_finished"
    streams = [r for r in fake.requests if r.url.path.endswith("/stream")]
    assert [(r.url.params.get("after"), r.headers.get("last-event-id")) for r in streams] == [
        ("0", None), (None, "3"), (None, "3"), (None, "5"),
    ]  # fmt: skip
    assert pauses == [0.01, 0.02, 0.01], "retry: 10 ms, doubling while no event comes"


def test_stream_drops_an_event_the_server_sends_again() -> None:
    fake = FakeApi()
    run_id = fake.add_run()
    fake.cuts = [(4, "drop")]
    fake.repeat = True
    api, _ = client(fake)
    assert seqs(list(api.stream(run_id, after=2))) == list(range(3, 12))


def test_stream_ended_early_goes_on_while_the_run_does() -> None:
    fake = FakeApi()
    run_id = fake.add_run()
    fake.cuts = [(5, "end")]
    api, pauses = client(fake)
    assert seqs(list(api.stream(run_id))) == list(range(1, 12))
    assert [r.url.path.rsplit("/", 1)[-1] for r in fake.requests] == [
        "stream", run_id, "stream",
    ], "a clean end: the run is read, still running, so the stream is opened again"  # fmt: skip
    assert pauses == [0.01]


def test_stream_gives_up_after_reconnecting_in_vain_and_refuses_without_retrying() -> None:
    fake = FakeApi()
    run_id = fake.add_run()
    fake.cuts = [(0, "drop")] * 20
    api, pauses = client(fake)
    with pytest.raises(httpx.RemoteProtocolError):
        list(api.stream(run_id))
    assert len(pauses) == wire.RECONNECTS - 1
    assert len(fake.requests) == wire.RECONNECTS
    with pytest.raises(ApiError) as caught:
        list(api.stream("nope"))
    assert caught.value.status == 404 and len(fake.requests) == wire.RECONNECTS + 1


def test_wait_follows_the_stream_then_returns_the_final_run() -> None:
    fake = FakeApi()
    run_id = fake.add_run(final="failed")
    fake.cuts = [(6, "drop")]
    api, _ = client(fake)
    run = api.wait(run_id)
    assert run["status"] == "failed" and run["error"]["step"] == "c"
    kinds = [r.url.path.rsplit("/", 1)[-1] for r in fake.requests]
    assert kinds == [run_id, "stream", "stream", run_id]


def test_wait_polls_when_there_is_no_stream_and_times_out() -> None:
    fake = FakeApi()
    run_id = fake.add_run()
    fake.stream_status = 405
    fake.polls = 4
    api, pauses = client(fake)
    assert api.wait(run_id)["status"] == "succeeded"
    assert len(pauses) == 2 and pauses[0] == pytest.approx(0.2)
    slow = fake.add_run()
    fake.stream_status, fake.polls = None, 10**9
    fake.cuts = [(3, "end")] * 5
    with pytest.raises(TimeoutError, match=slow):
        api.wait(slow, timeout=0)
    assert FINAL == {"succeeded", "failed", "cancelled", "abandoned"}


def test_the_async_client_has_the_same_behaviour() -> None:
    fake = FakeApi()
    for _ in range(5):
        fake.add_run()
    fake.limited = 1
    fake.cuts = [(2, "drop"), (4, "drop")]
    pauses: list[float] = []

    async def nap(seconds: float) -> None:
        pauses.append(seconds)

    async def scenario() -> tuple[list[str], list[int], dict[str, Any]]:
        async with AsyncClient(URL, transport=httpx.MockTransport(fake)) as api:
            api._sleep = nap  # type: ignore[method-assign]
            with pytest.raises(RateLimited):
                await api.submit("hello", inputs={"n": 1})
            accepted = await api.submit("hello", inputs={"n": 1}, idempotency_key="a")
            listed = [r["run_id"] async for r in api.list(limit=2)]
            streamed = [e["seq"] async for e in api.stream(accepted["run_id"])]
            return listed, streamed, await api.wait(accepted["run_id"])

    listed, streamed, final = asyncio.run(scenario())
    assert len(listed) == 6 and listed[0] == fake.order[0]
    assert streamed == list(range(1, 12)) and final["status"] == "succeeded"
    assert pauses == [0.01, 0.01]
    streams = [r.headers.get("last-event-id") for r in fake.requests if "stream" in r.url.path]
    assert streams == [None, "2", "6"]


# -- the command line: straight from the trace store ---------------------------------------------


def _local_run(tmp_path: Path, wf: str, *extra: str) -> dict[str, Any]:
    path = tmp_path / "wf.yaml"
    path.write_text(wf)
    proc = cli("run", str(path), "--db", str(tmp_path / "t.db"), "--json", *extra, cwd=tmp_path)
    return as_json(proc)  # type: ignore[no-any-return]


def test_status_and_follow_read_a_local_run_from_the_store(tmp_path: Path) -> None:
    db = str(tmp_path / "t.db")
    done = _local_run(tmp_path, "name: two\nsteps:\n  - {id: a, uses: echo, with: {x: 1}}\n"
                      "  - {id: b, uses: flaky, with: {fail_times: 9}, needs: [a],"
                      " retry: {max_attempts: 2, backoff: 0}}\n")  # fmt: skip
    assert done["status"] == "failed"
    status = cli("status", done["run_id"][:8], "--db", db, "--json", cwd=tmp_path)
    assert status.returncode == 0
    shown = as_json(cli("show", done["run_id"], "--db", db, "--json", cwd=tmp_path))
    assert as_json(status) == shown
    human = cli("status", done["run_id"], "--db", db, cwd=tmp_path)
    assert human.returncode == 0 and "failed" in human.stdout
    assert "steps: 1 failed, 1 succeeded" in human.stdout and "error: step 'b'" in human.stdout
    follow = cli("follow", done["run_id"], "--db", db, cwd=tmp_path)
    assert follow.returncode == 1, follow.stderr
    assert follow.stdout.count("▶ b") == 2 and "✗ b  failed after 2 attempts" in follow.stdout
    assert as_json(cli("follow", done["run_id"], "--db", db, "--json", cwd=tmp_path)) | {
        "steps": None
    } == {**done, "steps": None}
    nothing = cli("status", "abcd", "--db", db, cwd=tmp_path)
    assert nothing.returncode == 1 and "no run 'abcd'" in nothing.stderr
    both = cli("follow", "abcd", "--db", db, "--api", URL, cwd=tmp_path)
    assert both.returncode == 2 and "not both" in both.stderr


def _started(tmp_path: Path, wf: str, env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    """A local run in its own process, once its ``long`` step has started."""
    path = tmp_path / "long.yaml"
    path.write_text(wf)
    proc = subprocess.Popen([DAGWRIGHT, "run", str(path), "--json"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        runs = (
            as_json(cli("runs", "--json", cwd=tmp_path))
            if (tmp_path / ".dagwright").exists()
            else []
        )
        if runs:
            events = as_json(cli("trace", runs[0]["run_id"], "--json", cwd=tmp_path))
            if any(e["type"] == "attempt_started" and e["step"] == "long" for e in events):
                return proc, runs[0]["run_id"]
        time.sleep(0.1)
    proc.kill()
    raise AssertionError("the run did not start")


LONG = ("name: long\nsteps:\n  - {id: first, uses: sleep, with: {ms: 1}}\n"
        "  - {id: long, uses: sleep, with: {ms: MS}, needs: [first]}\n"
        "  - {id: after, uses: echo, with: {x: 1}, needs: [long]}\n")  # fmt: skip


def test_follow_shows_a_run_of_another_process_live_until_it_ends(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DAGWRIGHT_")}
    proc, run_id = _started(tmp_path, LONG.replace("MS", "1500"), env)
    follow = cli("follow", run_id, cwd=tmp_path)
    proc.communicate(timeout=30)
    assert proc.returncode == 0 and follow.returncode == 0, follow.stderr
    lines = follow.stdout.splitlines()
    assert [ln.split()[1] for ln in lines if ln.startswith("  ✓ ")] == ["first", "long", "after"]
    assert f"run {run_id}  succeeded" in follow.stdout


def test_follow_ends_when_the_run_s_process_is_gone(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DAGWRIGHT_")}
    proc, run_id = _started(tmp_path, LONG.replace("MS", "60000"), env)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=10)
    follow = cli("follow", run_id, "--json", cwd=tmp_path, env={"DAGWRIGHT_HEARTBEAT": "0.2"})
    assert follow.returncode == 1, follow.stderr
    assert as_json(follow)["status"] == "abandoned"


# -- the command line: through the API (the double on a real socket) ---------------------------


def test_submit_sends_a_file_or_a_name_with_typed_inputs(tmp_path: Path) -> None:
    fake = FakeApi(token="s3cret")
    wf = tmp_path / "greet.yaml"
    wf.write_text("name: greet\ninputs:\n  n: {type: integer}\n  code: {type: string}\n"
                  "steps:\n  - {id: a, uses: echo, with: {x: 1}}\n")  # fmt: skip
    with served(fake) as url:
        env = {"DAGWRIGHT_API_URL": url, "DAGWRIGHT_API_TOKEN": "s3cret"}
        sent = cli("submit", str(wf), "-i", "n=5", "-i", "code=007", "--idempotency-key", "k",
                   "--json", cwd=tmp_path, env=env)  # fmt: skip
        assert sent.returncode == 0, sent.stderr
        run_id = as_json(sent)["run_id"]
        body = json.loads(fake.requests[-1].content)
        assert body["workflow_yaml"] == wf.read_text()
        assert body["inputs"] == {"n": 5, "code": "007"}
        assert fake.requests[-1].headers["idempotency-key"] == "k"
        human = cli("submit", "hello", "--input", "n=2", "--api", url, cwd=tmp_path,
                    env={"DAGWRIGHT_API_TOKEN": "s3cret"})  # fmt: skip
        assert human.returncode == 0, human.stderr
        assert json.loads(fake.requests[-1].content)["inputs"] == {"n": 2}
        assert f"follow: dagwright follow {fake.order[0]} --api {url}" in human.stdout
        assert run_id in fake.runs and len(fake.runs) == 2
        no_token = cli("submit", "hello", "--api", url, cwd=tmp_path)
        assert no_token.returncode == 1 and "401 Unauthorized" in no_token.stderr
        assert "DAGWRIGHT_API_TOKEN" in no_token.stderr


def test_submit_refusals_exit_2_with_the_located_problems(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nsteps:\n  - id: b\n    uses: nope\n")
    with served(FakeApi()) as url:
        env = {"DAGWRIGHT_API_URL": url}
        proc = cli("submit", str(bad), cwd=tmp_path, env=env)
        assert proc.returncode == 2
        assert f"{bad}:4, step 'b', field 'uses': unknown tool 'nope'" in proc.stderr
        data = as_json(cli("submit", str(bad), "--json", cwd=tmp_path, env=env))
        assert data["status"] == "invalid" and data["errors"][0]["file"] == str(bad)
        typed = cli("submit", "hello", "-i", "n=ten", cwd=tmp_path, env=env)
        assert typed.returncode == 2 and "input 'n' must be integer" in typed.stderr
        unknown = cli("submit", "nope", cwd=tmp_path, env=env)
        assert unknown.returncode == 2 and "404 Unknown workflow" in unknown.stderr
        missing = cli("submit", "missing.yaml", cwd=tmp_path, env=env)
        assert missing.returncode == 2 and "no such file" in missing.stderr
    gone = cli("submit", "hello", "--api", url, cwd=tmp_path)
    assert gone.returncode == 1 and f"cannot reach the API at {url}" in gone.stderr


def test_submit_wait_and_follow_stream_through_dropped_connections(tmp_path: Path) -> None:
    fake = FakeApi()
    with served(fake) as url:
        env = {"DAGWRIGHT_API_URL": url}
        fake.cuts = [(4, "drop"), (3, "drop")]
        waited = cli("submit", "hello", "-i", "n=1", "--wait", cwd=tmp_path, env=env)
        assert waited.returncode == 0, waited.stderr
        for step in ("a", "b", "c"):
            assert waited.stdout.count(f"▶ {step}") == 1
            assert waited.stdout.count(f"✓ {step}  1 attempt") == 1
        assert "succeeded" in waited.stdout and '"ok": true' in waited.stdout
        streams = [r.headers.get("last-event-id") for r in fake.requests if "stream" in r.url.path]
        assert streams == [None, "4", "7"]
        failing = fake.add_run("fail-me", final="failed", queued=True)
        fake.cuts = [(2, "drop")]
        followed = cli("follow", failing, cwd=tmp_path, env=env)
        assert followed.returncode == 1
        assert "✗ c  failed after 1 attempt: c broke" in followed.stdout
        assert "queued: waiting for a slot of 'acme' (limit 2)\n  admitted" in followed.stdout
        status = cli("status", failing, "--json", cwd=tmp_path, env=env)
        assert status.returncode == 0 and as_json(status)["status"] == "failed"
        final = cli("follow", failing, "--json", cwd=tmp_path, env=env)
        assert final.returncode == 1 and as_json(final)["error"]["message"] == "c broke"
        cancelled = fake.add_run(final="cancelled")
        assert cli("follow", cancelled, cwd=tmp_path, env=env).returncode == 130
        assert cli("follow", "nope", cwd=tmp_path, env=env).returncode == 1


def test_the_commands_are_listed(tmp_path: Path) -> None:
    listed = cli("--help", cwd=tmp_path).stdout
    assert all(f" {c} " in listed for c in ("submit", "status", "follow"))
    assert "Exit code as for `run`" in cli("follow", "--help", cwd=tmp_path).stdout
    assert "## Clients" in (REPO / "docs" / "api.md").read_text(encoding="utf-8")


# -- end to end: the real server -------------------------------------------------------------------


def test_the_client_and_the_commands_against_a_real_server(tmp_path: Path) -> None:
    """The double's contract is the server's: the same calls against `dagwright serve`."""
    from apitools import Server

    bad = "name: bad\nsteps:\n  - id: a\n    uses: nope\n"
    with Server(tmp_path, DAGWRIGHT_API_TOKENS="s3cret") as srv:
        with Client(srv.url, "s3cret") as api:
            run = api.submit("diamond", inputs={"delay_ms": 20}, idempotency_key="e2e")
            streamed = list(api.stream(run["run_id"]))
            assert seqs(streamed) == list(range(1, len(streamed) + 1))
            assert streamed[-1]["type"] == "run_finished" and streamed == api.events(run["run_id"])
            assert seqs(list(api.stream(run["run_id"], after=3)))[0] == 4
            assert api.wait(run["run_id"], timeout=60)["status"] == "succeeded"
            again = api.submit("diamond", inputs={"delay_ms": 20}, idempotency_key="e2e")
            assert again["run_id"] == run["run_id"]
            with pytest.raises(ApiError) as caught:
                api.submit(workflow_yaml=bad)
            assert caught.value.status == 422 and caught.value.errors[0]["line"] == 4
            assert [r["run_id"] for r in api.list(limit=1)] == [run["run_id"]]
        with Client(srv.url) as anonymous, pytest.raises(ApiError) as unauthorized:
            anonymous.get(run["run_id"])
        assert unauthorized.value.status == 401
        env = {"DAGWRIGHT_API_URL": srv.url, "DAGWRIGHT_API_TOKEN": "s3cret"}
        waited = cli("submit", "diamond", "-i", "delay_ms=10", "--wait", "--json",
                     cwd=tmp_path, env=env)  # fmt: skip
        assert waited.returncode == 0, waited.stderr
        final = as_json(waited)
        assert final["status"] == "succeeded" and final["inputs"]["delay_ms"] == 10
        followed = cli("follow", final["run_id"], cwd=tmp_path, env=env)
        assert followed.returncode == 0 and followed.stdout.count("✓ ") == 4, followed.stdout
        (tmp_path / "bad.yaml").write_text(bad)
        refused = cli("submit", "bad.yaml", cwd=tmp_path, env=env)
        assert refused.returncode == 2 and "bad.yaml:4, step 'a', field 'uses'" in refused.stderr
        stored = cli("status", final["run_id"], "--db", srv.db, "--json", cwd=tmp_path)
        assert as_json(stored)["status"] == "succeeded"
