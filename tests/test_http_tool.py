"""http.request against a local HTTP server this test starts (``http_server.HttpServer`` on
127.0.0.1, reachable only because each step's ``allow_hosts`` names it): outputs, the size
cap, retries as the step's policy decides them, every SSRF refusal, and replay without the
server. No wall-clock assertions: counts of requests and attempts, statuses, messages."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from http_server import HttpServer

from dagwright.errors import PlanError, StepError
from dagwright.executors.engine import events as ev
from dagwright.executors.local import LocalExecutor, RunResult
from dagwright.executors.replay import replay_run
from dagwright.executors.store.memory import MemoryTraceStore
from dagwright.executors.store.sql import SqlTraceStore
from dagwright.planner.schema import Workflow
from dagwright.planner.validate import check
from dagwright.tools import ToolRegistry
from dagwright.tools import _http_guard as guard
from dagwright.tools.http import http_request

LOCAL = ["127.0.0.1"]


@pytest.fixture
def server() -> Iterator[HttpServer]:
    with HttpServer() as s:
        yield s


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in __import__("os").environ if k.startswith("DAGWRIGHT_")]:
        monkeypatch.delenv(key)


def call(url: str, **kw: Any) -> dict[str, Any]:
    return dict(http_request(url, **kw))


def refused(url: str, **kw: Any) -> str:
    with pytest.raises(guard.Refused) as info:
        http_request(url, **kw)
    assert info.value.retryable is False
    return str(info.value)


def run(steps: list[dict[str, Any]], registry: ToolRegistry, store: Any = None) -> RunResult:
    workflow = Workflow.model_validate({"name": "http", "steps": steps})
    return LocalExecutor(store or MemoryTraceStore(), registry).run(workflow)


def attempts(result: RunResult, step: str) -> list[dict[str, Any]]:
    return [
        {"status": a.status, "kind": (a.error or {}).get("kind"), "error": a.error}
        for a in result.state.steps[step].attempts
    ]


# -- outputs ---------------------------------------------------------------------------------------
def test_get_json_records_response_request_and_timing(server: HttpServer) -> None:
    out = call(server.url("/json"), params={"q": "x", "n": [1, 2]}, allow_hosts=LOCAL,
               headers={"Authorization": "Bearer tok-123", "X-Api-Key": "k-456",
                        "Cookie": "a=b", "X-Trace": "visible"})  # fmt: skip
    assert out["status"] == 200 and out["json"] == {"ok": True, "items": [1, 2, 3]}
    assert "text" not in out
    assert out["url"] == server.url("/json?q=x&n=1&n=2")
    assert out["redirects"] == [] and isinstance(out["elapsed_ms"], float)
    assert out["headers"]["content-type"] == "application/json"
    assert out["headers"]["set-cookie"] == "[REDACTED]"
    request = out["request"]
    assert request["method"] == "GET" and request["body_bytes"] == 0
    sent = request["headers"]
    assert sent["authorization"] == sent["x-api-key"] == sent["cookie"] == "[REDACTED]"
    assert sent["x-trace"] == "visible"
    assert server.requests[0].headers["Authorization"] == "Bearer tok-123", "sent, not recorded"
    assert "tok-123" not in repr(out) and "k-456" not in repr(out) and "s3cr3t" not in repr(out)


def test_post_json_and_text_bodies(server: HttpServer) -> None:
    out = call(server.url("/echo"), method="post", json={"a": [1, "ü"]}, allow_hosts=LOCAL)
    assert out["json"]["method"] == "POST"
    assert out["json"]["body"] == '{"a":[1,"ü"]}'
    assert out["json"]["headers"]["Content-Type"] == "application/json"
    assert out["request"]["body_bytes"] == len('{"a":[1,"ü"]}'.encode())
    out = call(server.url("/echo"), method="PUT", body="plain", allow_hosts=LOCAL,
               headers={"Content-Type": "text/plain"})  # fmt: skip
    assert out["json"]["body"] == "plain" and out["request"]["body_bytes"] == 5
    with pytest.raises(StepError, match="give `json` or `body`, not both") as info:
        http_request(server.url("/echo"), json={}, body="x", allow_hosts=LOCAL)
    assert info.value.retryable is False and len(server.requests) == 2


def test_text_head_and_unfollowed_redirect(server: HttpServer) -> None:
    assert call(server.url("/text"), allow_hosts=LOCAL)["text"] == "héllo, world"
    head = call(server.url("/text"), method="HEAD", allow_hosts=LOCAL)
    assert head["status"] == 200 and head["text"] == ""
    out = call(server.url("/redirect?to=/json"), follow_redirects=False, allow_hosts=LOCAL)
    assert out["status"] == 302 and out["headers"]["location"] == "/json"
    out = call(server.url("/redirect?to=/json"), allow_hosts=LOCAL)
    assert out["json"]["ok"] is True and out["redirects"] == [server.url("/redirect?to=/json")]


def test_user_info_and_secret_query_values_are_not_recorded(server: HttpServer) -> None:
    url = f"http://user:pw-789@127.0.0.1:{server.port}/json?token=t-000&page=2"
    out = call(url, allow_hosts=LOCAL)
    assert "pw-789" not in repr(out) and "t-000" not in repr(out)
    assert "page=2" in out["url"] and "token=%5BREDACTED%5D" in out["request"]["url"]
    assert server.requests[0].headers["Authorization"].startswith("Basic ")


def test_binary_and_too_many_redirects_are_refused_clearly(server: HttpServer) -> None:
    with pytest.raises(StepError, match=r"the response is binary \(image/png") as info:
        http_request(server.url("/binary"), allow_hosts=LOCAL)
    assert info.value.retryable is False
    with pytest.raises(StepError, match="more than 5 redirects") as info:
        http_request(server.url("/loop"), allow_hosts=LOCAL)
    assert info.value.retryable is False and server.hits["/loop"] == 6


# -- the size cap ----------------------------------------------------------------------------------
def test_a_body_over_the_cap_is_not_retryable_and_names_the_cap(server: HttpServer) -> None:
    assert len(call(server.url("/bytes/100"), max_bytes=100, allow_hosts=LOCAL)["text"]) == 100
    with pytest.raises(StepError, match=r"larger than max_bytes \(100 bytes\)") as info:
        http_request(server.url("/bytes/101"), max_bytes=100, allow_hosts=LOCAL)
    assert info.value.retryable is False


def test_the_cap_counts_decompressed_bytes(server: HttpServer) -> None:
    out = call(server.url("/gzip/5000"), allow_hosts=LOCAL)
    assert out["text"] == "x" * 5000 and out["headers"]["content-encoding"] == "gzip"
    assert out["request"]["headers"]["accept-encoding"] == "gzip, deflate"
    with pytest.raises(StepError, match=r"larger than max_bytes \(1,048,576 bytes\)"):
        http_request(server.url("/gzip/50000000"), allow_hosts=LOCAL)  # ~50 KB on the wire


def test_max_bytes_is_bounded_by_the_setting(
    server: HttpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DAGWRIGHT_HTTP_MAX_BYTES", "1000")
    with pytest.raises(StepError, match="DAGWRIGHT_HTTP_MAX_BYTES") as info:
        http_request(server.url("/json"), max_bytes=1001, allow_hosts=LOCAL)
    assert info.value.retryable is False and server.requests == []


# -- retries, as the step's policy decides ---------------------------------------------------------
RETRY = {"max_attempts": 3, "backoff": 0}


def step(path: str, server: HttpServer, **with_: Any) -> dict[str, Any]:
    return {"id": "call", "uses": "http.request", "retry": dict(RETRY),
            "with": {"url": server.url(path), "allow_hosts": LOCAL, **with_}}  # fmt: skip


def test_5xx_is_retried_until_it_succeeds(server: HttpServer, registry: ToolRegistry) -> None:
    result = run([step("/flaky/2", server)], registry)
    assert result.status == "succeeded" and result.output == {"call": result.output["call"]}
    assert result.output["call"]["json"] == {"after": 2}
    assert [a["status"] for a in attempts(result, "call")] == ["failed", "failed", "succeeded"]
    first = attempts(result, "call")[0]["error"]
    assert first["kind"] == "error" and first["retryable"] is True
    assert "503 Service Unavailable: busy" in first["message"]
    assert server.hits["/flaky/2"] == 3


@pytest.mark.parametrize(("status", "requests"), [(500, 3), (503, 3), (429, 3), (404, 1), (400, 1),
                                                  (401, 1), (501, 1)])  # fmt: skip
def test_which_statuses_are_retried(
    server: HttpServer, registry: ToolRegistry, status: int, requests: int
) -> None:
    result = run([step(f"/status/{status}", server)], registry)
    assert result.status == "failed"
    assert len(server.requests) == requests == len(attempts(result, "call"))
    assert f"/status/{status}: {status} " in result.error["message"]


def test_a_read_timeout_is_retried_as_a_timeout(server: HttpServer, registry: ToolRegistry) -> None:
    result = run([step("/slow", server, timeout={"read": 0.2})], registry)
    assert result.status == "failed" and server.hits["/slow"] == 3
    kinds = [(a["status"], a["kind"], a["error"]["retryable"]) for a in attempts(result, "call")]
    assert kinds == [("failed", "timeout", True)] * 3
    assert "ReadTimeout" in result.error["message"]


def test_a_connection_refused_is_retried_for_any_method(registry: ToolRegistry) -> None:
    with HttpServer() as gone:
        url = gone.url("/echo")
    result = run([{"id": "call", "uses": "http.request", "retry": dict(RETRY),
                   "with": {"url": url, "method": "POST", "allow_hosts": LOCAL}}], registry)  # fmt: skip
    assert [a["kind"] for a in attempts(result, "call")] == ["error"] * 3, "nothing was sent"
    assert "ConnectError" in result.error["message"]


def test_post_is_not_retried_by_default(server: HttpServer, registry: ToolRegistry) -> None:
    result = run([step("/status/503", server, method="POST", json={"n": 1})], registry)
    assert result.status == "failed" and len(server.requests) == 1
    error = attempts(result, "call")[0]["error"]
    assert error["kind"] == "non_idempotent" and error["retryable"] is True
    assert "retry_on lists non_idempotent" in error["message"]
    slow = run([step("/slow", server, method="PATCH", timeout={"read": 0.2})], registry)
    assert [a["kind"] for a in attempts(slow, "call")] == ["non_idempotent"]
    assert server.hits["/slow"] == 1


def test_post_is_retried_when_retry_on_lists_non_idempotent(
    server: HttpServer, registry: ToolRegistry
) -> None:
    opted = step("/flaky/1", server, method="POST", json={})
    opted["retry"]["retry_on"] = ["error", "timeout", "non_idempotent"]
    result = run([opted], registry)
    assert result.status == "succeeded" and server.hits["/flaky/1"] == 2
    keyed = step("/flaky/2", server, method="POST", headers={"Idempotency-Key": "k1"})
    assert run([keyed], registry).status == "succeeded" and server.hits["/flaky/2"] == 3


# -- SSRF: refused unless allow_hosts names the host -----------------------------------------------
@pytest.mark.parametrize(
    ("host", "why"),
    [
        ("127.0.0.1", "127.0.0.1 is a loopback address"),
        ("[::1]", "::1 is a loopback address"),
        ("[::ffff:127.0.0.1]", "a loopback address (it carries 127.0.0.1)"),
        ("[::ffff:7f00:1]", "a loopback address (it carries 127.0.0.1)"),
        ("[::127.0.0.1]", "a loopback address (it carries 127.0.0.1)"),
        ("2130706433", "127.0.0.1 is a loopback address"),
        ("0x7f.1", "127.0.0.1 is a loopback address"),
        ("127.1", "127.0.0.1 is a loopback address"),
        ("0177.1", "127.0.0.1 is a loopback address"),
        ("10.0.0.1", "a private address"),
        ("192.168.1.1", "a private address"),
        ("[fd12::1]", "a private address"),
        ("169.254.1.1", "a link-local address"),
        ("[fe80::1]", "a link-local address"),
        ("224.0.0.1", "a multicast address"),
        ("[ff02::1]", "a multicast address"),
        ("0.0.0.0", "the unspecified address"),
        ("[::]", "the unspecified address"),
        ("100.64.0.1", "the shared address space 100.64.0.0/10"),
        ("240.0.0.1", "a reserved address"),
        ("169.254.169.254", "a cloud metadata address"),
        ("[fd00:ec2::254]", "a cloud metadata address"),
        ("[64:ff9b::a9fe:a9fe]", "a cloud metadata address (it carries 169.254.169.254)"),
        # every range and form docs/tools.md lists
        ("172.16.0.1", "a private address"),
        ("172.31.255.254", "a private address"),
        ("[fc00::1]", "a private address"),
        ("[::ffff:10.0.0.1]", "a private address (it carries 10.0.0.1)"),
        ("[64:ff9b::7f00:1]", "a loopback address (it carries 127.0.0.1)"),
        ("[2002:7f00:1::]", "a loopback address (it carries 127.0.0.1)"),
        ("[2002:a9fe:a9fe::]", "a cloud metadata address (it carries 169.254.169.254)"),
        ("[::ffff:169.254.169.254]", "a cloud metadata address (it carries 169.254.169.254)"),
        ("169.254.170.2", "a cloud metadata address"),
        ("100.100.100.200", "a cloud metadata address"),
        ("192.0.0.192", "a cloud metadata address"),
        ("0.1.2.3", "a private address"),
        ("192.0.0.8", "a special-purpose address"),
        ("198.18.0.1", "a private address"),
        ("203.0.113.5", "a private address"),
        ("[100::1]", "a reserved address"),
        ("[2001:db8::1]", "a private address"),
    ],
)
def test_internal_addresses_are_refused(
    host: str, why: str, server: HttpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(guard, "resolve", _no_lookup)
    message = refused(f"http://{host}:{server.port}/json")
    assert why in message and "allow_hosts" in message
    assert server.requests == []


def test_a_malformed_numeric_host_is_refused(server: HttpServer) -> None:
    for host in ["0177.0.0.1", "08.1", "256.1"]:
        with pytest.raises(StepError, match="(?i)invalid|not a valid") as info:
            http_request(f"http://{host}:{server.port}/json")
        assert info.value.retryable is False
    assert server.requests == []


def _no_lookup(host: str, port: int) -> list[str]:
    raise AssertionError(f"{host} was looked up")


def test_a_name_resolving_to_loopback_is_refused(server: HttpServer) -> None:
    message = refused(server.url("/json", host="localhost"))
    assert "it resolves to 127.0.0.1, which is a loopback address" in message
    assert server.requests == []
    assert call(server.url("/json", host="localhost"), allow_hosts=["localhost"])["status"] == 200


def test_every_resolved_address_must_be_allowed(
    server: HttpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(guard, "resolve", lambda host, port: ["93.184.216.34", "127.0.0.1"])
    assert "resolves to 127.0.0.1" in refused(server.url("/json", host="api.example.test"))
    assert server.requests == []


def test_the_checked_address_is_the_one_connected_to(
    server: HttpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A name allowed by a wildcard is resolved once (a second lookup could rebind it), and
    the connection goes to that address with the name in the Host header."""
    lookups: list[str] = []

    def resolve(host: str, port: int) -> list[str]:
        lookups.append(host)
        return ["127.0.0.1"] if len(lookups) == 1 else ["10.9.9.9"]

    monkeypatch.setattr(guard, "resolve", resolve)
    out = call(server.url("/echo", host="svc.example.test"), allow_hosts=["*.example.test"])
    assert out["json"]["headers"]["Host"] == f"svc.example.test:{server.port}"
    assert lookups == ["svc.example.test"]
    apex = refused(server.url("/json", host="example.test"), allow_hosts=["*.example.test"])
    assert "it resolves to 10.9.9.9, which is a private address" in apex, "*.x matches below x"


def test_a_redirect_to_a_forbidden_host_is_refused(server: HttpServer) -> None:
    for target, why in [
        ("http://169.254.169.254/latest/meta-data/", "a cloud metadata address"),
        (server.url("/json", host="localhost"), "resolves to 127.0.0.1"),
        (f"http://[::ffff:127.0.0.1]:{server.port}/json", "it carries 127.0.0.1"),
    ]:
        message = refused(server.url(f"/redirect?to={target}"), allow_hosts=LOCAL)
        assert "(on a redirect)" in message and why in message
    assert [r.path.split("?")[0] for r in server.requests] == ["/redirect"] * 3


def test_metadata_names_are_refused_before_any_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(guard, "resolve", _no_lookup)
    for url in ["http://metadata.google.internal/computeMetadata/v1/", "http://metadata/",
                "http://METADATA.google.internal./"]:  # fmt: skip
        assert "names a cloud metadata service" in refused(url)
    message = refused("http://metadata.google.internal/", allow_hosts=["*.google.internal"])
    assert "cloud metadata" in message, "a wildcard never allows a metadata service"


def test_public_addresses_need_no_allow_hosts() -> None:
    for text in ["8.8.8.8", "2001:4860:4860::8888", "::ffff:8.8.8.8", "2002:808:808::"]:
        assert guard.refusal(ipaddress.ip_address(text)) is None, text


def test_a_refusal_is_recorded_and_not_retried(server: HttpServer, registry: ToolRegistry) -> None:
    result = run([{"id": "call", "uses": "http.request", "retry": dict(RETRY),
                   "with": {"url": server.url("/json", host="localhost")}}], registry)  # fmt: skip
    assert result.status == "failed" and len(attempts(result, "call")) == 1
    assert "loopback" in result.error["message"] and server.requests == []


def test_bad_allow_hosts_and_urls_are_found_before_running(registry: ToolRegistry) -> None:
    workflow = Workflow.model_validate({"name": "bad", "steps": [
        {"id": "a", "uses": "http.request",
         "with": {"url": "http://x.example/", "allow_hosts": ["http://x.example:80"]}},
        {"id": "b", "uses": "http.request", "with": {"url": "file:///etc/passwd"}},
        {"id": "c", "uses": "http.request",
         "with": {"url": "https://x.example/", "timeout": {"read": 9999}, "method": "TRACE"}},
    ]})  # fmt: skip
    with pytest.raises(PlanError) as info:
        check(workflow, registry)
    fields = sorted((i.step, i.field) for i in info.value.issues)
    assert fields == [("a", "with.allow_hosts.0"), ("b", "with.url"), ("c", "with.method"),
                      ("c", "with.timeout.read")]  # fmt: skip
    assert "without scheme, port or path" in str(info.value)


# -- replay ----------------------------------------------------------------------------------------
def test_replay_serves_the_recorded_responses_without_a_request(
    server: HttpServer, registry: ToolRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SqlTraceStore(str(tmp_path / "t.db"))
    steps = [
        step("/flaky/1", server),
        {"id": "post", "uses": "http.request", "needs": ["call"],
         "with": {"url": server.url("/echo"), "method": "POST", "allow_hosts": LOCAL,
                  "json": {"after": "${{ steps.call.output.json.after }}"}}},
    ]  # fmt: skip
    recorded = run(steps, registry, store)
    assert recorded.status == "succeeded" and len(server.requests) == 3
    server.stop()
    monkeypatch.setattr(guard, "resolve", _no_lookup)
    monkeypatch.setattr(guard._GuardedBackend, "connect_tcp", _no_connect)
    report = replay_run(store, recorded.run_id, registry)
    assert report.divergences == [] and report.status == "succeeded"
    assert report.attempts_compared == 3 and len(server.requests) == 3
    replayed = store.events(report.run_id)
    finished = [e for e in replayed if e.type == ev.RUN_FINISHED][0]
    assert finished.data["status"] == "succeeded"
    assert store.get_run(report.run_id).lineage()["mode"] == "replay"
    state_out = [e.data.get("output") for e in replayed
                 if e.type == ev.ATTEMPT_FINISHED and e.step == "post"]  # fmt: skip
    assert state_out[0]["json"]["body"] == '{"after":1}'
    store.close()


def _no_connect(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("replay connected")
