"""schemathesis against a running ``dagwright serve`` (the local executor, a SQLite trace store):
every operation of the /openapi.json it serves, with requests generated from that document
(fitting it, and not), is answered without a 5xx, and the server logs no exception.

Generated run ids rarely name a run, so each case whose path names a run is sent a second time
with recorded runs' ids in its place: the bodies of cancel, resume, fork, replay and diff then
reach the service, not only the 404 before it. Task submissions are planned by the local
OpenAI-compatible stub (no network).

schemathesis's own pytest plugin (``from_fixture(...).parametrize()``) does not run under
pytest 9 (it sets ``Function._nodeid``); the tests here drive its Hypothesis strategies
directly, one test per operation and generation mode."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from apitools import Server, wait_final
from hypothesis import HealthCheck, given, settings
from openai_stub import OpenAIStub, tool_reply
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from dagwright.api.app import create_app
from dagwright.settings import Settings

PLAN = {"name": "planned", "steps": [{"id": "a", "uses": "echo", "with": {"x": 1}}]}
SEED = {
    "ok": {"workflow_yaml": "name: ok\nsteps:\n  - id: a\n    uses: echo\n    with: {x: 1}\n"},
    "failed": {"workflow_yaml": "name: bad\nsteps: [{id: a, uses: flaky, with: {fail_times: 3}}]"},
    "diamond": {"workflow": "diamond", "inputs": {"delay_ms": 1}},
}
RUN_PARAMS = ("run_id", "run_a", "run_b")
EXAMPLES = int(os.environ.get("DAGWRIGHT_TEST_SCHEMA_EXAMPLES", "25"))
"""Examples per operation and mode: the module in about 30 s on 2 cores; raise it for a deeper
search (200: under 2 minutes)."""
DOCUMENT = create_app(Settings()).openapi()  # the document the server serves (checked below)
OPERATIONS = [
    f"{method.upper()} {path}" for path, ops in DOCUMENT["paths"].items() for method in ops
]
NEGATABLE = [  # a query, a header or a body to get wrong (a path's string ids cannot be)
    f"{method.upper()} {path}"
    for path, ops in DOCUMENT["paths"].items()
    for method, op in ops.items()
    if "requestBody" in op or any(p["in"] != "path" for p in op.get("parameters", []))
]


@pytest.fixture(scope="module")
def stub() -> Iterator[OpenAIStub]:
    with OpenAIStub(respond=lambda body: tool_reply("Plan", PLAN)) as s:
        yield s


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, stub: OpenAIStub) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("schema"), DAGWRIGHT_MODEL_BASE_URL=stub.base_url,
                 DAGWRIGHT_MODEL_API_KEY="sk-stub", DAGWRIGHT_API_RATE="10000",
                 DAGWRIGHT_API_BURST="10000")  # fmt: skip
    with srv:
        yield srv
    log = srv.log.read_text(errors="replace")
    assert "Traceback" not in log, f"the server logged an exception:\n{log[-6000:]}"


@pytest.fixture(scope="module")
def runs(server: Server) -> list[str]:
    """Recorded runs (succeeded, failed) that the second call of each case acts on."""
    ids: dict[str, str] = {}
    with server.client() as client:
        for name, body in SEED.items():
            response = client.post("/v1/runs", json=body)
            assert response.status_code == 202, response.text
            ids[name] = response.json()["run_id"]
        statuses = {name: wait_final(client, rid)["status"] for name, rid in ids.items()}
    assert statuses == {"ok": "succeeded", "failed": "failed", "diamond": "succeeded"}
    return list(ids.values())


@pytest.fixture(scope="module")
def api_schema(server: Server, runs: list[str]) -> Any:
    return schemathesis.openapi.from_url(f"{server.url}/openapi.json")


def test_every_operation_is_fuzzed(api_schema: Any) -> None:
    assert {op.ok().label for op in api_schema.get_all_operations()} == set(OPERATIONS)
    assert "POST /v1/runs" in NEGATABLE and "GET /v1/runs" in NEGATABLE
    assert len(OPERATIONS) >= 14


@pytest.mark.parametrize(
    ("label", "mode"),
    [(label, GenerationMode.POSITIVE) for label in OPERATIONS]
    + [(label, GenerationMode.NEGATIVE) for label in NEGATABLE],
)
def test_no_generated_request_gets_a_server_error(
    label: str, mode: GenerationMode, api_schema: Any, runs: list[str]
) -> None:
    operation = api_schema.find_operation_by_label(label)
    assert operation is not None
    sent = 0

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    def generated(case: Any) -> None:
        nonlocal sent
        case.call_and_validate(checks=[not_a_server_error], timeout=30)
        sent += 1
        params = case.path_parameters or {}
        named = [p for p in RUN_PARAMS if p in params]
        if named:
            for i, name in enumerate(named):
                params[name] = runs[(sent + i) % len(runs)]
            case.call_and_validate(checks=[not_a_server_error], timeout=30)

    generated()
    assert sent > 0
