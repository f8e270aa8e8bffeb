"""docs/tools.md "Writing a tool" is true: its modules and workflows are extracted from the page
and run with the installed ``dagwright`` command; its console samples are what the commands
print. (The model-calling example runs against the local OpenAI-compatible test server.)"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Any

import pytest
from clitools import REPO, as_json, cli
from openai_stub import OpenAIStub, tool_reply
from pydantic import TypeAdapter

from dagwright import StepError

PAGE = REPO / "docs" / "tools.md"
SAMPLE = "Tools are typed functions. Steps use them."


def section(title: str) -> str:
    text = PAGE.read_text(encoding="utf-8")
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else len(text)]


WRITING = section("Writing a tool")


def blocks(lang: str) -> list[str]:
    return re.findall(rf"^ *```{lang}\n(.*?)^ *```", WRITING, re.S | re.M)


def files() -> dict[str, str]:
    """The page's modules and workflows: the blocks whose first line is ``# NAME.py``/``.yaml``."""
    found = {}
    for lang in ("python", "yaml"):
        for block in blocks(lang):
            head = re.match(r"# (\w+\.(?:py|yaml))\b", block)
            if head:
                found[head.group(1)] = block
    return found


def console(command: str) -> list[str]:
    """The lines a console sample shows after ``$ COMMAND`` (the sample's own indentation
    removed)."""
    for block in blocks("console"):
        lines = block.splitlines()
        first = lines[0].strip()
        if first.startswith("$ ") and first[2:].startswith(command):
            indent = len(lines[0]) - len(lines[0].lstrip())
            return [line[indent:] for line in lines[1:]]
    raise AssertionError(f"no console sample of {command!r} in docs/tools.md")


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    for name, text in files().items():
        (work / name).write_text(text, encoding="utf-8")
    return work


def test_the_page_has_the_example_files() -> None:
    assert set(files()) == {"text_tools.py", "count.yaml", "review_tools.py", "review.yaml"}
    assert "from dagwright import StepError, ToolContext, tool" in files()["text_tools.py"]


def test_the_example_validates_runs_and_prints_what_the_page_shows(folder: Path) -> None:
    proc = cli("validate", "count.yaml", cwd=folder)
    assert proc.returncode == 0, proc.stderr
    proc = cli("run", "count.yaml", "-i", f"text={SAMPLE}", cwd=folder)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    shown = console(f'dagwright run count.yaml -i text="{SAMPLE}"')
    assert shown[0] == "…"
    assert "\n".join(shown[1:]) in proc.stdout
    proc = cli("run", "count.yaml", "-i", f"text={SAMPLE}", "--json", cwd=folder)
    data = as_json(proc)
    assert data["output"] == {"words": 7, "longest": "FUNCTIONS"}
    assert data["steps"]["shout"]["attempts"] == 1


def test_a_text_without_words_fails_without_a_retry(folder: Path) -> None:
    wf = folder / "count.yaml"
    wf.write_text(wf.read_text().replace("uses: text.word_count", "uses: text.word_count\n"
                                         "    retry: {max_attempts: 3, backoff: 0}"))  # fmt: skip
    proc = cli("run", "count.yaml", "-i", "text=...", "--json", cwd=folder)
    assert proc.returncode == 1
    count = as_json(proc)["steps"]["count"]
    assert count["status"] == "failed" and count["attempts"] == 1
    assert "the text has no words" in proc.stdout


def test_a_misspelt_reference_is_found_by_validate_as_the_page_shows(folder: Path) -> None:
    wf = folder / "count.yaml"
    wf.write_text(wf.read_text().replace("steps.count.output.words", "steps.count.output.wordz"))
    proc = cli("validate", "count.yaml", cwd=folder)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == console("dagwright validate count.yaml")


def test_out_of_bounds_and_unknown_arguments_are_validation_problems(folder: Path) -> None:
    wf = folder / "count.yaml"
    wf.write_text(wf.read_text().replace("min_length: 2", "min_length: 0, colour: red"))
    proc = cli("validate", "count.yaml", "--json", cwd=folder)
    assert proc.returncode == 2
    fields = sorted(e["field"] for e in as_json(proc)["errors"])
    assert fields == ["with.colour", "with.min_length"]


def test_the_tools_listing_is_what_the_page_shows(folder: Path) -> None:
    proc = cli("tools", "count.yaml", cwd=folder)
    assert proc.returncode == 0, proc.stderr
    shown = console("dagwright tools count.yaml")
    cut = [line.strip() for line in shown].index("…")
    printed = proc.stdout.splitlines()
    assert printed[:cut] == shown[:cut]
    tail = shown[cut + 1 :]
    assert printed[-len(tail) :] == tail
    listed = {t["name"]: t for t in as_json(cli("tools", "count.yaml", "--json", cwd=folder))}
    assert listed["text.word_count"]["source"] == "workflow:text_tools"
    assert listed["text.word_count"]["output"]["required"] == ["words", "sentences", "longest"]
    assert listed["echo"]["source"] == "builtin"


def test_the_step_error_samples_raise_what_the_page_says() -> None:
    sample = next(b for b in blocks("python") if b.startswith("raise StepError"))
    raised = []
    for line in sample.splitlines():
        with pytest.raises(StepError) as caught:
            exec(line.split("#")[0], {"StepError": StepError})  # noqa: S102 - the page's own sample
        raised.append((caught.value.retryable, caught.value.kind))
    assert raised == [
        (True, "error"),
        (False, "error"),
        (True, "timeout"),
        (True, "non_idempotent"),
    ]


def test_the_typed_dict_sample_gives_an_output_schema() -> None:
    sample = next(b for b in blocks("python") if "TypedDict" in b and "class Slept" in b)
    space: dict[str, Any] = {}
    exec(sample, space)  # noqa: S102 - the page's own sample
    schema = TypeAdapter(space["Slept"]).json_schema()
    assert schema["properties"] == {"slept_ms": {"title": "Slept Ms", "type": "integer"}}


def test_the_model_calling_tool_is_recorded_retried_and_replayed(folder: Path) -> None:
    with OpenAIStub() as stub:
        stub.replies.append(tool_reply("Answer", {"value": {"verdict": "revise", "reasons": []}}))
        stub.replies.append(
            tool_reply("Answer", {"value": {"verdict": "accept", "reasons": ["clear"]}})
        )
        env = {"DAGWRIGHT_MODEL_BASE_URL": stub.base_url, "DAGWRIGHT_MODEL_API_KEY": "sk-test"}
        proc = cli("run", "review.yaml", "-i", "draft=Tools are typed.", "--json",
                   cwd=folder, env=env)  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
        run = as_json(proc)
        assert run["output"] == "accept" and run["steps"]["review"]["attempts"] == 2
        assert len(stub.requests) == 2
        retried = stub.requests[1]["body"]["messages"][-1]["content"]
        assert "gives reasons failed" in retried, "the retry tells the model what failed"
    events = as_json(cli("trace", run["run_id"], "--json", cwd=folder))
    calls = [(e["step"], e["attempt"]) for e in events if e["type"] == "model_call"]
    assert calls == [("review", 1), ("review", 2)]
    dead = {"DAGWRIGHT_MODEL_BASE_URL": "http://127.0.0.1:9/v1"}  # no model to call
    proc = cli("replay", run["run_id"], "--json", cwd=folder, env=dead)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    replayed = as_json(proc)
    assert replayed["reproduced"] is True and replayed["model_calls_served"] == 2


def test_an_empty_draft_fails_before_any_model_call(folder: Path) -> None:
    with OpenAIStub() as stub:
        env = {"DAGWRIGHT_MODEL_BASE_URL": stub.base_url, "DAGWRIGHT_MODEL_API_KEY": "sk-test"}
        proc = cli("run", "review.yaml", "-i", "draft= ", "--json", cwd=folder, env=env)
        assert proc.returncode == 1
        review = as_json(proc)["steps"]["review"]
        assert review["status"] == "failed" and review["attempts"] == 1
        assert stub.requests == []


def test_a_settings_module_missing_from_the_current_directory_says_where_it_looked(
    tmp_path: Path,
) -> None:
    proc = cli("tools", cwd=tmp_path, env={"DAGWRIGHT_TOOLS": "my_tools"})
    assert proc.returncode == 2
    shown = console("DAGWRIGHT_TOOLS=my_tools dagwright tools")
    expected = [line.replace("/home/me/elsewhere", str(tmp_path)) for line in shown]
    assert proc.stderr.splitlines()[: len(expected)] == expected


def test_the_listing_of_secrets_and_optional_packages_is_what_tools_prints(tmp_path: Path) -> None:
    sample = next(b for b in blocks("console") if b.splitlines()[0].strip() == "$ dagwright tools")
    hide = tmp_path / "site"  # as where the retrieval extra is not installed
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(
        "import sys\nsys.modules['sentence_transformers'] = None\n"
    )
    proc = cli("tools", cwd=tmp_path, env={"PYTHONPATH": str(hide)})
    assert proc.returncode == 0, proc.stderr
    printed = proc.stdout.splitlines()
    exact = [line for line in sample.splitlines()[1:] if "…" not in line]
    assert len(exact) == 7 and [line for line in exact if line in printed] == exact


def test_a_tool_that_requires_a_missing_package_is_refused_with_its_install_command(
    tmp_path: Path,
) -> None:
    sample = next(b for b in blocks("python") if "requires=Requires(" in b)
    (tmp_path / "pdf_tools.py").write_text(textwrap.dedent(sample))
    (tmp_path / "pdf.yaml").write_text(
        "name: pdf\ntools: [pdf_tools]\nsteps:\n  - {id: read, uses: pdf.text, with: {path: a.pdf}}\n"
    )
    listed = {t["name"]: t for t in as_json(cli("tools", "pdf.yaml", "--json", cwd=tmp_path))}
    requires = listed["pdf.text"]["requires"]
    assert requires["modules"] == ["pypdf"] and requires["install"] == "pip install pypdf"
    if requires["missing"] != ["pypdf"]:
        pytest.skip("pypdf is installed here")
    proc = cli("validate", "pdf.yaml", cwd=tmp_path)
    assert proc.returncode == 2
    assert "pdf.yaml:4, step 'read', field 'uses': tool 'pdf.text' needs pypdf" in proc.stderr
    assert "install it: pip install pypdf" in proc.stderr
