"""Every kind of bad input is refused by `validate` and by `run` (exit 2) before any step runs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dagwright.cli.main import app

HEAD = "name: bad\ninputs:\n  n: {type: integer}\n  m: {type: integer}\nsteps:\n"
CASES = {
    "yaml syntax": ("name: [unclosed\nsteps: []\n", "YAML syntax error"),
    "unknown key": (HEAD + "  - {id: a, uses: echo, wiht: {}}\n", "unknown key 'wiht'"),
    "duplicate key": (HEAD + "  - id: a\n    uses: echo\n    id: b\n", "duplicate key 'id'"),
    "duplicate step id": (
        HEAD + "  - {id: a, uses: echo}\n  - {id: a, uses: echo}\n",
        "duplicate step id 'a'",
    ),
    "unknown tool": (HEAD + "  - {id: a, uses: nope}\n", "unknown tool 'nope'"),
    "argument type": (HEAD + "  - {id: a, uses: sleep, with: {ms: soon}}\n", "valid integer"),
    "unknown argument": (
        HEAD + "  - {id: a, uses: sleep, with: {ms: 1, s: 2}}\n",
        "has no argument 's'",
    ),
    "missing argument": (HEAD + "  - {id: a, uses: sleep}\n", "needs argument 'ms'"),
    "missing step": (
        HEAD + "  - {id: a, uses: echo, with: {x: '${{ steps.b.output }}'}}\n",
        "unknown step 'b'",
    ),
    "missing input": (
        HEAD + "  - {id: a, uses: echo, with: {x: '${{ inputs.k }}'}}\n",
        "undeclared input 'k'",
    ),
    "impossible path": (
        HEAD + "  - {id: a, uses: sleep, with: {ms: 1}}\n"
        "  - {id: b, uses: echo, with: {x: '${{ steps.a.output.ms }}'}}\n",
        "output has no field 'ms'",
    ),
    "cycle": (
        HEAD + "  - {id: a, uses: echo, needs: [b]}\n  - {id: b, uses: echo, needs: [a]}\n",
        "dependency cycle: a → b → a",
    ),
    "bad check": (
        HEAD + "  - id: a\n    uses: echo\n    verify: [{regex: '('}]\n",
        "invalid regex",
    ),
    "missing required input": (HEAD + "  - {id: a, uses: echo}\n", "missing required input 'm'"),
    "ill-typed input": (HEAD + "  - {id: a, uses: echo}\n", "input 'n' must be integer"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_refused_by_validate_and_run(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text, expected = CASES[case]
    path = tmp_path / "wf.yaml"
    path.write_text(text)
    monkeypatch.chdir(tmp_path)
    for key in [k for k in os.environ if k.startswith("DAGWRIGHT_")]:
        monkeypatch.delenv(key)
    inputs = ["--input", "n=five"] if case == "ill-typed input" else ["--input", "n=1"]
    for command in ("validate", "run"):
        result = CliRunner().invoke(app, [command, str(path), *inputs])
        assert result.exit_code == 2, (command, result.output)
        assert expected in result.stderr, (command, result.stderr)
        assert str(path) in result.stderr, "the file is named"
    assert not (tmp_path / ".dagwright").exists(), "nothing ran and nothing was recorded"


def test_an_ill_typed_default_is_refused_at_its_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "wf.yaml"
    path.write_text(
        "name: bad\ninputs:\n  n:\n    type: integer\n    default: two\n"
        "steps:\n  - {id: a, uses: echo, with: {x: '${{ inputs.n }}'}}\n"
    )
    monkeypatch.chdir(tmp_path)
    for key in [k for k in os.environ if k.startswith("DAGWRIGHT_")]:
        monkeypatch.delenv(key)
    for command in ("validate", "run"):
        result = CliRunner().invoke(app, [command, str(path)])
        assert result.exit_code == 2, (command, result.output)
        assert f"{path}:5, field 'inputs.n.default'" in result.stderr, (command, result.stderr)
        assert "the default of input 'n' must be integer" in result.stderr
        assert "remove it to make the input required" in result.stderr, "a hint"
    assert not (tmp_path / ".dagwright").exists(), "nothing ran and nothing was recorded"
