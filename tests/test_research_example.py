"""workflows/examples/research.yaml end to end through the installed `dagwright`, offline:
`index build` of the example corpus, `validate`, `run` (retrieve → an llm.generate answer from
the local OpenAI-compatible TEST DOUBLE, checked `grounded` → an http.request POST to a local
HTTP service that the `allow_hosts` input allows), `show`, and `replay` with the model server
and the service stopped and no index: every response served from the trace.

The test double answers like a model that cites badly first: its first answer cites a passage
`find` did not return, so the `grounded` check fails that attempt and the retry — told why —
cites the passage that mentions the error code."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from clitools import REPO, as_json, cli
from conftest import require_retrieval_extra
from http_server import HttpServer
from openai_stub import OpenAIStub, text_reply

EXAMPLE = REPO / "workflows" / "examples" / "research.yaml"
CORPUS = REPO / "workflows" / "examples" / "corpus"
QUESTION = "What does error E-231 mean?"


def passages_in(body: dict[str, Any]) -> list[dict[str, Any]]:
    prompt = body["messages"][-1]["content"]
    for message in body["messages"]:
        if "Passages (JSON): " in message["content"]:
            prompt = message["content"]
    start = prompt.index("Passages (JSON): ") + len("Passages (JSON): ")
    passages, _ = json.JSONDecoder().raw_decode(prompt[start:])
    return passages  # type: ignore[no-any-return]


def answer(body: dict[str, Any]) -> dict[str, Any]:
    """The TEST DOUBLE's model: a wrong citation, then, told why, the right one."""
    passages = passages_in(body)
    if not any("previous answer was rejected" in m["content"] for m in body["messages"]):
        return text_reply("E-231 means the battery is too warm [warranty.md#99].")
    cited = next((p for p in passages if "E-231" in p["text"]), passages[0])
    line = next(ln for ln in cited["text"].splitlines() if "E-231" in ln or ln.strip())
    return text_reply(f"{line.strip(' |-')} [{cited['doc_id']}#{cited['chunk']}].")


def test_the_research_example_runs_offline_and_replays_with_everything_stopped(
    tmp_path: Path,
) -> None:
    require_retrieval_extra()
    index = {"DAGWRIGHT_INDEX_DIR": str(tmp_path / "indexes")}
    db = {"DAGWRIGHT_DB": str(tmp_path / "trace.db")}
    built = cli("index", "build", str(CORPUS), "--name", "kestrel", cwd=tmp_path, env=index,
                timeout=300)  # fmt: skip
    assert built.returncode == 0, built.stderr
    assert "index kestrel: 24 files" in built.stdout

    with OpenAIStub(respond=answer) as stub, HttpServer() as service:
        model = {"DAGWRIGHT_MODEL": "openai:stub-model-2026-11-01",
                 "DAGWRIGHT_MODEL_BASE_URL": stub.base_url, "DAGWRIGHT_MODEL_API_KEY": "sk-stub"}  # fmt: skip
        env = {**index, **db, **model}
        inputs = ["-i", f"question={QUESTION}", "-i", f"post_url={service.url('/echo')}"]
        assert cli("validate", str(EXAMPLE), *inputs, cwd=tmp_path, env=env).returncode == 0
        ran = cli("run", str(EXAMPLE), *inputs, "-i", 'allow_hosts=["127.0.0.1"]', "--json",
                  cwd=tmp_path, env=env, timeout=300)  # fmt: skip
        assert ran.returncode == 0, ran.stdout + ran.stderr
        asked = len(stub.requests)
    run = as_json(ran)
    assert run["status"] == "succeeded"
    assert {s: run["steps"][s]["attempts"] for s in ("find", "answer", "post")} == {
        "find": 1, "answer": 2, "post": 1
    }  # fmt: skip
    out = run["output"]
    assert out["posted"] == 200 and "error-codes.md" in out["sources"]
    assert out["answer"].endswith("].") and "[error-codes.md#" in out["answer"]
    (posted,) = service.requests
    assert posted.method == "POST" and posted.path == "/echo"
    assert json.loads(posted.body) == {"question": QUESTION, "answer": out["answer"],
                                       "sources": out["sources"]}  # fmt: skip
    assert asked == 2, "the refused answer and the grounded one"
    assert "previous answer was rejected" in json.dumps(stub.requests[-1])
    assert "[warranty.md#99], which no step it depends on retrieved" in json.dumps(
        stub.requests[-1]
    ), "the retry is told which citation was wrong"

    shown = cli("show", run["run_id"], cwd=tmp_path, env=db)
    assert shown.returncode == 0, shown.stderr
    assert "answer attempt 1 failed" in shown.stdout and "grounded" in shown.stdout

    # everything stopped: no model server, no service, no index, no model settings
    gone = {"DAGWRIGHT_INDEX_DIR": str(tmp_path / "no-indexes"), **db}
    replayed = cli("replay", run["run_id"], "--json", cwd=tmp_path, env=gone, timeout=120)
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    report = as_json(replayed)
    assert report["reproduced"] is True and report["divergences"] == []
    assert report["attempts_compared"] == 4 and report["model_calls_served"] == 2
    assert not (tmp_path / "no-indexes").exists(), "the index was not opened"
    again = cli("show", report["run_id"], "--json", cwd=tmp_path, env=db)
    assert as_json(again)["output"] == out
