"""What only the operator's workflows may do: read secrets, and let ``http.request`` reach
internal addresses (``allow_hosts``). Through the API, a workflow posted as text, a plan a model
wrote (the local OpenAI-compatible TEST DOUBLE) and a fork's ``set`` edits cannot; a plan
revised by a model cannot add or change such a step. Each is refused located, before anything
is recorded or sent, against a real ``dagwright serve`` and a local HTTP service standing in for
an internal one (``http_server.HttpServer`` on 127.0.0.1)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from apitools import Server, wait_final
from http_server import HttpServer
from openai_stub import OpenAIStub, tool_reply

from dagwright.executors.local import LocalExecutor
from dagwright.executors.store.memory import MemoryTraceStore
from dagwright.planner import operator_only
from dagwright.planner.schema import Workflow
from dagwright.secret_values import SecretValues
from dagwright.tools import default_registry

TOKEN = "dw-op-only-7Qx9Zk"
ENV = {"DAGWRIGHT_SECRET_API_TOKEN": TOKEN}

INTERNAL = """\
name: internal
inputs:
  url: {type: string}
steps:
  - id: where
    uses: echo
    with: {url: "${{ inputs.url }}"}
  - id: call
    uses: http.request
    with:
      url: "${{ steps.where.output.url }}"
      allow_hosts: [127.0.0.1]
      headers: {Authorization: "Bearer ${{ secrets.API_TOKEN }}"}
  - id: report
    uses: echo
    with: {status: "${{ steps.call.output.status }}"}
"""


@pytest.fixture(scope="module")
def service() -> Iterator[HttpServer]:
    with HttpServer() as s:
        yield s


@pytest.fixture(scope="module")
def plans() -> Iterator[tuple[OpenAIStub, list[dict[str, Any]]]]:
    """The stub answers each task with the next plan of the list."""
    queued: list[dict[str, Any]] = []
    with OpenAIStub(respond=lambda body: tool_reply("Plan", queued.pop(0))) as stub:
        yield stub, queued


@pytest.fixture(scope="module")
def api(
    tmp_path_factory: pytest.TempPathFactory, plans: tuple[OpenAIStub, list[dict[str, Any]]]
) -> Iterator[httpx.Client]:
    folder = tmp_path_factory.mktemp("op")
    (folder / "workflows").mkdir()
    (folder / "workflows" / "internal.yaml").write_text(INTERNAL)
    settings = {"DAGWRIGHT_WORKFLOWS": str(folder / "workflows"),
                "DAGWRIGHT_MODEL_BASE_URL": plans[0].base_url, "DAGWRIGHT_MODEL_API_KEY": "sk"}  # fmt: skip
    with Server(folder, **settings, **ENV) as server, server.client() as client:
        yield client


def refused(response: httpx.Response) -> set[tuple[str | None, str | None, str]]:
    assert response.status_code == 422, response.text
    assert response.json()["detail"].endswith("nothing was run or recorded")
    return {(e["step"], e["field"], e["message"]) for e in response.json()["errors"]}


def run_count(client: httpx.Client) -> int:
    return len(client.get("/v1/runs", params={"limit": 200}).json()["runs"])


def test_a_workflow_posted_as_text_may_not_name_allow_hosts(
    api: httpx.Client, service: HttpServer
) -> None:
    before, sent = run_count(api), len(service.requests)
    text = INTERNAL.replace(
        '      headers: {Authorization: "Bearer ${{ secrets.API_TOKEN }}"}\n', ""
    )
    answer = api.post("/v1/runs", json={"workflow_yaml": text,
                                        "inputs": {"url": service.url("/json")}})  # fmt: skip
    errors = answer.json().get("errors", [])
    assert refused(answer) == {
        ("call", "with.allow_hosts", "a workflow given as text cannot name allow_hosts")
    }
    assert [e["line"] for e in errors] == [12], "located at its line"
    assert "DAGWRIGHT_WORKFLOWS" in errors[0]["hint"]
    public = text.replace("      allow_hosts: [127.0.0.1]\n", "")
    accepted = api.post("/v1/runs", json={"workflow_yaml": public,
                                          "inputs": {"url": service.url("/json")}})  # fmt: skip
    assert accepted.status_code == 202, accepted.text  # and then refused by the address guard
    run = wait_final(api, accepted.json()["run_id"])
    assert run["status"] == "failed" and "127.0.0.1" in json.dumps(run["error"])
    assert run_count(api) == before + 1 and len(service.requests) == sent, "nothing sent"


def test_a_plan_written_by_a_model_may_not_name_allow_hosts(
    api: httpx.Client, service: HttpServer, plans: tuple[OpenAIStub, list[dict[str, Any]]]
) -> None:
    stub, queued = plans
    queued.append({"name": "probe", "steps": [{"id": "probe", "uses": "http.request", "with": {
        "url": "http://169.254.169.254/latest/meta-data/", "allow_hosts": ["169.254.169.254"]}}]})  # fmt: skip
    before, asked = run_count(api), len(stub.requests)
    answer = api.post("/v1/runs", json={"task": "look around", "model": "openai:m"})
    assert refused(answer) == {
        ("probe", "with.allow_hosts", "a plan written by a model cannot name allow_hosts")
    }
    assert len(stub.requests) == asked + 1 and run_count(api) == before


def test_a_fork_may_not_edit_a_step_that_reads_secrets_or_names_allow_hosts(
    api: httpx.Client, service: HttpServer
) -> None:
    accepted = api.post("/v1/runs", json={"workflow": "internal",
                                          "inputs": {"url": service.url("/echo")}})  # fmt: skip
    assert accepted.status_code == 202, accepted.text
    run_id = accepted.json()["run_id"]
    assert wait_final(api, run_id)["status"] == "succeeded"
    sent = len(service.requests)
    assert service.requests[-1].headers["Authorization"] == f"Bearer {TOKEN}"
    before = run_count(api)
    elsewhere = service.url("/echo?to=elsewhere")
    for edit, field in [
        (f"steps.call.with.url={elsewhere}", "with.headers.Authorization"),  # the step itself
        (f"steps.where.with.url={elsewhere}", "with.headers.Authorization"),  # a step upstream
        ('steps.call.with.allow_hosts=["127.0.0.1","10.0.0.1"]', "with.allow_hosts"),
    ]:
        answer = api.post(f"/v1/runs/{run_id}/fork", json={"set": [edit]})
        errors = refused(answer)
        assert ("call", field, "a fork's edits may not read secrets in a step the workflow did "
                "not have as it is") in errors or ("call", field, "a fork's edits may not name "
                "allow_hosts in a step the workflow did not have as it is") in errors, (edit, errors)  # fmt: skip
    assert run_count(api) == before and len(service.requests) == sent, "nothing run or sent"
    kept = api.post(f"/v1/runs/{run_id}/fork", json={"set": ["steps.report.with.note=ok"]})
    assert kept.status_code == 202, kept.text  # a step downstream may be edited
    fork = wait_final(api, kept.json()["run_id"])
    assert fork["status"] == "succeeded" and fork["steps"]["call"]["attempts"] == 0, "reused"


def test_a_revised_plan_may_not_add_allow_hosts(service: HttpServer) -> None:
    boom = {"id": "boom", "uses": "flaky", "on_failure": "replan", "with": {"fail_times": 9}}
    original = Workflow.model_validate({"name": "r", "steps": [boom]})
    probe = {"id": "probe", "uses": "http.request",
             "with": {"url": service.url("/json?probe"), "allow_hosts": ["127.0.0.1"]}}  # fmt: skip
    revised = Workflow.model_validate({"name": "r", "steps": [probe]})
    result = LocalExecutor(MemoryTraceStore(), default_registry,
                           replanner=lambda *_: revised).run(original)  # fmt: skip
    assert result.status == "failed"
    assert "a revised plan may not name allow_hosts" in json.dumps(result.error)
    assert not any("probe" in r.path for r in service.requests)


def test_changed_compares_the_step_and_every_step_it_depends_on() -> None:
    base = Workflow.model_validate(
        {
            "name": "w",
            "inputs": {"url": {"type": "string"}},
            "steps": [
                {"id": "where", "uses": "echo", "with": {"url": "${{ inputs.url }}"}},
                {
                    "id": "call",
                    "uses": "http.request",
                    "with": {
                        "url": "${{ steps.where.output.url }}",
                        "headers": {"A": "${{ secrets.API_TOKEN }}"},
                    },
                },  # fmt: skip
                {"id": "after", "uses": "echo", "with": {"s": "${{ steps.call.output.status }}"}},
            ],
        }
    )
    data = base.to_data()
    assert operator_only.changed(base, base, "a fork's edits") == []
    data["steps"][2]["with"] = {"s": "downstream may change"}
    assert operator_only.changed(base, Workflow.model_validate(data), "x") == []
    data["steps"][0]["with"] = {"url": "https://elsewhere.example/"}
    (issue,) = operator_only.changed(base, Workflow.model_validate(data), "x")
    assert (issue.step, issue.field) == ("call", "with.headers.A")
    assert "keep the step, and the steps it depends on, as they are" in (issue.hint or "")
    uses = list(operator_only.operator_only_uses(base))
    assert [(u[1], u[2], u[3]) for u in uses] == [("call", "with.headers.A", "read secrets")]


def test_a_local_run_of_a_workflow_file_may_use_both(tmp_path: Path, service: HttpServer) -> None:
    """The operator's own workflow: nothing here is refused."""
    from dagwright.planner.loader import loads_workflow

    wf = loads_workflow(INTERNAL).workflow
    secrets = SecretValues({"API_TOKEN": TOKEN})
    result = LocalExecutor(MemoryTraceStore(), default_registry, secrets=secrets).run(
        wf, {"url": service.url("/echo")}
    )
    assert result.status == "succeeded", result.error
    assert result.state.steps["report"].output == {"status": 200}


def test_the_planner_is_shown_no_example_that_a_plan_may_not_copy(tmp_path: Path) -> None:
    from dagwright.planner.llm import example_plans

    (tmp_path / "a_internal.yaml").write_text(INTERNAL)
    (tmp_path / "b_plain.yaml").write_text("name: plain\nsteps:\n  - {id: a, uses: echo}\n")
    shown = example_plans(default_registry, tmp_path)
    assert [e.splitlines()[0] for e in shown] == ["name: plain"]
    assert "name: research" not in "".join(example_plans(default_registry, limit=10))
