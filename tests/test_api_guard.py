"""The queue API's guards and listings against a real ``dagwright serve`` process: bearer tokens,
the body limit, the per-caller rate, list filters and cursors, and ``serve``'s refusal to listen
openly without tokens."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from apitools import Server, wait_final
from clitools import cli

PROBLEM = "application/problem+json"


def echo(name: str, fails: bool = False) -> str:
    step = "uses: flaky\n    with: {fail_times: 1}" if fails else "uses: echo\n    with: {x: 1}"
    return f"name: {name}\nsteps:\n  - id: only\n    {step}\n"


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with Server(tmp_path_factory.mktemp("guarded"), DAGWRIGHT_API_TOKENS="alpha,beta,gamma",
                DAGWRIGHT_API_RATE="1", DAGWRIGHT_API_BURST="2",
                DAGWRIGHT_API_MAX_BODY="4096") as srv:  # fmt: skip
        yield srv


def runs(client: httpx.Client, **params: Any) -> list[dict[str, Any]]:
    response = client.get("/v1/runs", params={"limit": 500, **params})
    assert response.status_code == 200, response.text
    return response.json()["runs"]  # type: ignore[no-any-return]


def test_tokens_are_required_and_checked(guarded: Server) -> None:
    body = {"workflow_yaml": echo("authed")}
    for client in (guarded.client(), guarded.client("wrong"), guarded.client("alpha-")):
        with client:
            for response in (client.get("/v1/runs"), client.post("/v1/runs", json=body),
                             client.get("/v1/runs/whatever")):  # fmt: skip
                assert response.status_code == 401
                assert response.headers["content-type"] == PROBLEM
                assert response.headers["www-authenticate"] == "Bearer"
                assert response.json()["title"] == "Unauthorized"
    with guarded.client("alpha") as client:
        assert runs(client, workflow="authed") == [], "a refused submission records nothing"
        accepted = client.post("/v1/runs", json=body)
        assert accepted.status_code == 202, accepted.text
        assert wait_final(client, accepted.json()["run_id"])["status"] == "succeeded"
        assert [r["run_id"] for r in runs(client, workflow="authed")] == [accepted.json()["run_id"]]
    with httpx.Client(base_url=guarded.url) as anonymous:
        assert anonymous.get("/healthz").json() == {"status": "ok"}, "health needs no token"


def test_a_body_over_the_limit_is_413(guarded: Server) -> None:
    big = {"workflow_yaml": echo("big") + "#" * 5000}
    with guarded.client("beta") as client:
        sized = client.post("/v1/runs", json=big)
        assert sized.status_code == 413
        assert sized.headers["content-type"] == PROBLEM and "4,096" in sized.json()["detail"]
        payload = httpx.Request("POST", "/", json=big).content

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams in
            for i in range(0, len(payload), 1000):
                yield payload[i : i + 1000]

        streamed = client.post("/v1/runs", content=chunks(),
                               headers={"content-type": "application/json"})  # fmt: skip
        assert streamed.status_code == 413 and streamed.headers["content-type"] == PROBLEM
        assert runs(client, workflow="big") == []


def test_the_third_quick_submission_is_429_with_retry_after(guarded: Server) -> None:
    body = {"workflow_yaml": echo("rated")}
    with guarded.client("gamma") as client:
        answers = [client.post("/v1/runs", json=body) for _ in range(3)]
        assert [a.status_code for a in answers] == [202, 202, 429]
        limited = answers[2]
        assert limited.headers["content-type"] == PROBLEM
        assert int(limited.headers["retry-after"]) >= 1
        assert client.get("/v1/runs").status_code == 200, "reading is not rate limited"
        for a in answers[:2]:
            wait_final(client, a.json()["run_id"])
        assert len(runs(client, workflow="rated")) == 2


@pytest.fixture(scope="module")
def open_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with Server(tmp_path_factory.mktemp("listing")) as srv:
        yield srv


def test_list_filters_and_pages_through_every_run_once(open_server: Server) -> None:
    with open_server.client() as client:
        t0 = time.time()
        good = [client.post("/v1/runs", json={"workflow_yaml": echo("listed")}) for _ in range(5)]
        bad = [client.post("/v1/runs", json={"workflow_yaml": echo("listed", fails=True)})
               for _ in range(2)]  # fmt: skip
        t1 = time.time()
        other = client.post("/v1/runs", json={"workflow_yaml": echo("unlisted")})
        ids = {r.json()["run_id"]: r for r in [*good, *bad, other]}
        assert all(r.status_code == 202 for r in ids.values()) and len(ids) == 8
        for run_id in ids:
            wait_final(client, run_id)
        good_ids = {r.json()["run_id"] for r in good}
        bad_ids = {r.json()["run_id"] for r in bad}

        seen: list[str] = []
        pages = 0
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"workflow": "listed", "limit": 3}
            if cursor:
                params["cursor"] = cursor
            page = client.get("/v1/runs", params=params).json()
            pages += 1
            assert len(page["runs"]) <= 3
            seen += [r["run_id"] for r in page["runs"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert pages == 3 and len(seen) == len(set(seen)) == 7, "no duplicates, none missing"
        assert set(seen) == good_ids | bad_ids
        listed = runs(client, workflow="listed")
        assert [r["run_id"] for r in listed] == seen, "pages follow the listing's order"
        started = [r["started_at"] for r in listed]
        assert started == sorted(started, reverse=True), "newest first"
        assert all(set(r) >= {"started_at", "finished_at", "duration"} for r in listed)
        assert {r["run_id"] for r in runs(client, workflow="listed", status="failed")} == bad_ids
        assert {r["run_id"] for r in runs(client, workflow="listed", status="succeeded")} == (
            good_ids
        )
        assert [r["workflow"] for r in runs(client, workflow="unlisted")] == ["unlisted"]
        window = {r["run_id"] for r in runs(client, started_after=t0, started_before=t1)}
        assert window == good_ids | bad_ids
        assert [r["run_id"] for r in runs(client, started_after=t1)] == [other.json()["run_id"]]
        # the former names of the filters still work
        assert {r["run_id"] for r in runs(client, created_after=t0, created_before=t1)} == window
        assert {r["executor"] for r in listed} == {"api"}
        bogus = client.get("/v1/runs", params={"cursor": "not-a-cursor"})
        assert bogus.status_code == 422 and bogus.headers["content-type"] == PROBLEM


def test_serve_refuses_an_open_address_without_tokens(tmp_path: Any) -> None:
    refused = cli("serve", "--host", "0.0.0.0", "--port", "1", cwd=tmp_path)
    assert refused.returncode == 2
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "DAGWRIGHT_API_TOKENS" in lines[0] and "--insecure" in lines[0]
    assert not (tmp_path / ".dagwright").exists(), "no trace store opened"
    shown = cli("serve", "--help", cwd=tmp_path, env={"COLUMNS": "200"})
    assert shown.returncode == 0
    for option in ("--host", "--port", "--executor", "--insecure", "--db", "--log-level"):
        assert option in shown.stdout


def test_serve_runs_several_processes_on_celery_only(tmp_path: Any) -> None:
    refused = cli("serve", "--workers", "2", "--port", "1", cwd=tmp_path)
    assert refused.returncode == 2
    assert "--workers N needs --executor celery" in refused.stderr
    assert not (tmp_path / ".dagwright").exists(), "no trace store opened"
