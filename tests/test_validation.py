"""Bad input is refused before anything runs, with file, line, step and field named."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from dagwright.errors import PlanError, PlanIssue
from dagwright.planner.inputs import resolve_inputs
from dagwright.planner.loader import loads_workflow
from dagwright.planner.prepare import prepare
from dagwright.tools import ToolRegistry


def problems(text: str, registry: ToolRegistry, tmp_path: Path | None = None) -> list[PlanIssue]:
    """Every problem `prepare` (what validate and run use) finds in a workflow file."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "wf.yaml"
        path.write_text(textwrap.dedent(text))
        try:
            prepare(path, registry, inputs_required=False)
        except PlanError as exc:
            for issue in exc.issues:
                assert issue.file == str(path)
                issue.file = "wf.yaml"
            return exc.issues
    return []


def one(issues: list[PlanIssue], needle: str) -> PlanIssue:
    found = [i for i in issues if needle in i.message]
    assert found, f"no problem mentioning {needle!r} in: {[str(i) for i in issues]}"
    return found[0]


def test_a_valid_workflow_has_no_problems(registry: ToolRegistry) -> None:
    assert (
        problems(
            """
        name: ok
        inputs: {n: integer}
        steps:
          - id: a
            uses: sleep
            with: {ms: "${{ inputs.n }}"}
          - id: b
            uses: echo
            with: {ms: "${{ steps.a.output.slept_ms }}"}
            verify: [{expr: "output.ms >= 0"}, {schema: {type: object}}]
        """,
            registry,
        )
        == []
    )


def test_yaml_syntax_error_names_the_line(registry: ToolRegistry) -> None:
    issue = one(
        problems("name: x\nsteps:\n  - id: a\n    uses: [echo\n", registry), "YAML syntax error"
    )
    assert issue.file == "wf.yaml" and issue.line is not None and issue.line >= 4


def test_unknown_keys_with_a_suggestion(registry: ToolRegistry) -> None:
    issues = problems(
        """
        name: x
        steps:
          - id: a
            uses: echo
            wiht: {a: 1}
            retry: {max_attemps: 2}
        """,
        registry,
    )
    wiht = one(issues, "unknown key 'wiht'")
    assert (wiht.line, wiht.step, wiht.field) == (6, "a", "wiht")
    assert "did you mean 'with'" in (wiht.hint or "")
    attemps = one(issues, "unknown key 'max_attemps'")
    assert (attemps.line, attemps.field) == (7, "retry.max_attemps")


def test_duplicate_keys_are_refused(registry: ToolRegistry) -> None:
    issue = one(
        problems("name: x\nsteps:\n  - id: a\n    uses: echo\n    uses: sleep\n", registry),
        "duplicate key 'uses'",
    )
    assert issue.line == 5


def test_duplicate_step_ids(registry: ToolRegistry) -> None:
    issue = one(
        problems(
            """
        name: x
        steps:
          - {id: a, uses: echo}
          - {id: a, uses: echo}
        """,
            registry,
        ),
        "duplicate step id 'a'",
    )
    assert issue.line == 5 and issue.step == "a" and "first at line 4" in issue.message


def test_unknown_tool_suggests_the_closest(registry: ToolRegistry) -> None:
    issue = one(
        problems("name: x\nsteps:\n  - {id: a, uses: slep}\n", registry), "unknown tool 'slep'"
    )
    assert issue.field == "uses" and "did you mean 'sleep'" in (issue.hint or "")


def test_arguments_are_checked_against_the_tool_signature(registry: ToolRegistry) -> None:
    issues = problems(
        """
        name: x
        steps:
          - id: a
            uses: sleep
            with: {ms: soon, extra: 1}
          - id: b
            uses: flaky
            with: {value: 1}
          - id: c
            uses: sleep
            with: {ms: "${{ steps.a.output.slept_ms }}"}
        """,
        registry,
    )
    assert one(issues, "valid integer").field == "with.ms"
    assert one(issues, "no argument 'extra'").line == 6
    missing = one(issues, "needs argument 'fail_times'")
    assert missing.step == "b" and missing.line == 9
    assert not [i for i in issues if i.step == "c"], "a reference is checked when it resolves"


def test_references_to_missing_steps_inputs_and_paths(registry: ToolRegistry) -> None:
    issues = problems(
        """
        name: x
        inputs: {topic: string}
        steps:
          - id: a
            uses: sleep
            with: {ms: 1}
          - id: b
            uses: echo
            with:
              s: "${{ steps.nope.output }}"
              i: "about ${{ inputs.topik }}"
              p: "${{ steps.a.output.slept }}"
              q: "${{ steps.a.result }}"
              t: "${{ inputs.topic.name }}"
              u: "${{ os.system('x') }}"
        output: "${{ steps.b.output.anything }} ${{ steps.zz.output }}"
        """,
        registry,
    )
    assert one(issues, "unknown step 'nope'").field == "with.s"
    topik = one(issues, "undeclared input 'topik'")
    assert topik.line == 12 and "did you mean 'topic'" in (topik.hint or "")
    slept = one(issues, "cannot exist: output has no field 'slept'")
    assert "did you mean 'slept_ms'" in slept.message
    assert one(issues, "only a step's output can be read").field == "with.q"
    assert one(issues, "input 'topic' is a string").field == "with.t"
    assert one(issues, "unknown name 'os'").field == "with.u"
    assert one(issues, "unknown step 'zz'").field == "output"


def test_needs_unknown_step_and_self(registry: ToolRegistry) -> None:
    issues = problems(
        """
        name: x
        steps:
          - {id: a, uses: echo, needs: [a, ghost]}
        """,
        registry,
    )
    assert one(issues, "cannot need itself").step == "a"
    assert one(issues, "needs unknown step 'ghost'").field == "needs"


def test_cycles_are_printed(registry: ToolRegistry) -> None:
    issues = problems(
        """
        name: x
        steps:
          - {id: a, uses: echo, needs: [c]}
          - {id: b, uses: echo, with: {v: "${{ steps.a.output }}"}}
          - {id: c, uses: echo, needs: [b]}
          - {id: free, uses: echo}
        """,
        registry,
    )
    cycle = one(issues, "dependency cycle")
    assert cycle.message == "dependency cycle: a → b → c → a"
    assert cycle.step == "a" and cycle.field == "needs" and cycle.line == 4


def test_bad_checks(registry: ToolRegistry) -> None:
    issues = problems(
        """
        name: x
        steps:
          - id: a
            uses: echo
            verify:
              - expr: "len(output.items >= "
              - regex: "(unclosed"
              - schema: {type: 12}
              - {contains: x, regex: y}
              - expr: "output.x == secret"
        """,
        registry,
    )
    assert one(issues, "cannot parse expression").field == "verify[0].expr"
    assert one(issues, "invalid regex").line == 8
    assert one(issues, "invalid JSON Schema").field == "verify[2].schema"
    assert one(issues, "exactly one of").field == "verify.3"
    assert one(issues, "unknown name 'secret'").line == 11


def test_schema_errors_and_semantic_errors_come_in_one_list(
    registry: ToolRegistry, tmp_path: Path
) -> None:
    """Even with a schema error, the CLI still reports unknown tools and references."""
    from typer.testing import CliRunner

    from dagwright.cli.main import app

    path = tmp_path / "wf.yaml"
    path.write_text(
        "name: x\nsteps:\n  - {id: a, uses: echo, retry: {max_attempts: 0}}\n"
        "  - {id: b, uses: nope}\n"
    )
    result = CliRunner().invoke(app, ["validate", str(path), "--json"])
    assert result.exit_code == 2
    import json

    messages = [e["message"] for e in json.loads(result.stdout)["errors"]]
    assert any("greater than or equal to 1" in m for m in messages)
    assert any("unknown tool 'nope'" in m for m in messages)


def test_inputs_are_checked_and_converted(registry: ToolRegistry) -> None:
    loaded = loads_workflow(
        textwrap.dedent("""
        name: x
        inputs:
          n: {type: integer}
          flag: {type: boolean, default: false}
          cfg: {type: object, default: {}}
        steps: [{id: a, uses: echo}]
        """),
        file="wf.yaml",
    )
    wf = loaded.workflow
    assert resolve_inputs(wf, {"n": "3", "cfg": '{"a": 1}'}, as_text=True) == {
        "n": 3,
        "flag": False,
        "cfg": {"a": 1},
    }
    with pytest.raises(PlanError) as exc:
        resolve_inputs(wf, {"flag": "maybe", "m": "1"}, as_text=True, source=loaded.source)
    text = str(exc.value)
    assert "missing required input 'n' (integer)" in text
    assert "input 'flag' must be boolean" in text
    assert "unknown input 'm'" in text and "wf.yaml" in text
    with pytest.raises(PlanError, match="must be integer"):
        resolve_inputs(wf, {"n": "three"}, as_text=True)
    with pytest.raises(PlanError, match="must be integer"):
        resolve_inputs(wf, {"n": "3"})  # from JSON, a string is not an integer


def test_an_ill_typed_default_is_refused_at_its_line(registry: ToolRegistry) -> None:
    issues = problems(
        """
        name: x
        inputs:
          n:
            type: integer
            default: two
          ratio: {type: number, default: 2}
          cfg: {type: object, default: {}}
          tags: {type: array, default: [a]}
        steps: [{id: a, uses: echo, with: {x: "${{ inputs.n }}"}}]
        """,
        registry,
    )
    assert [str(i) for i in issues] == [
        "wf.yaml:6, field 'inputs.n.default': the default of input 'n' must be integer: "
        "Input should be a valid integer (got 'two') "
        "(give a default of type integer, or remove it to make the input required)"
    ]


def test_validate_itself_refuses_an_ill_typed_default(registry: ToolRegistry) -> None:
    """What the executors call before a run: a bad default never reaches resolve_inputs."""
    from dagwright.planner.validate import validate

    loaded = loads_workflow(
        "name: x\ninputs:\n  flag: {type: boolean, default: 'yes'}\nsteps: [{id: a, uses: echo}]\n",
        file="wf.yaml",
    )
    issues = validate(loaded.workflow, registry, loaded.source)
    assert [(i.line, i.field) for i in issues] == [(3, "inputs.flag.default")]
    assert "must be boolean" in issues[0].message


def test_a_check_with_two_kinds_is_one_problem(registry: ToolRegistry) -> None:
    issues = problems(
        """
        name: x
        steps:
          - id: a
            uses: echo
            verify:
              - {expr: "output.x", regex: y}
        """,
        registry,
    )
    assert len(issues) == 1, [str(i) for i in issues]
    assert "exactly one of" in issues[0].message and issues[0].line == 7


@pytest.mark.parametrize(
    ("where", "expected_field"),
    [
        ("with: {x: '${{ inputs.topic.__class__ }}'}", "with.x"),
        ("with: {x: 'see ${{ inputs.topic.__globals__ }}'}", "with.x"),
        ("with: {x: '${{ steps.a.output.f.__subclasses__() }}'}", "with.x"),
        ("with: {x: '${{ steps.a.output[\"__dict__\"] }}'}", "with.x"),
        ("with: {x: '${{ (steps.a.output | list).mro }}'}", "with.x"),
        ("with: {x: '${{ steps.a.output.f.func_globals }}'}", "with.x"),
        ("with: {x: '${{ steps.a.output.g.gi_frame }}'}", "with.x"),
        ("with: {x: '${{ steps.a.output | attr(\"__class__\") }}'}", "with.x"),
        ("verify: [{expr: 'output.__class__ is defined'}]", "verify[0].expr"),
        ("verify: [{contains: x, target: 'output.__dict__'}]", "verify[0].target"),
        ("verify: [{contains: '${{ inputs.topic.__len__ }}'}]", "verify[0].contains"),
    ],
)
def test_unsafe_attributes_are_refused_before_anything_runs(
    registry: ToolRegistry, where: str, expected_field: str
) -> None:
    issues = problems(
        f"""
        name: x
        inputs: {{topic: string}}
        steps:
          - {{id: a, uses: echo}}
          - id: b
            uses: echo
            {where}
        """,
        registry,
    )
    assert len(issues) == 1, [str(i) for i in issues]
    issue = issues[0]
    assert "may not read" in issue.message and issue.hint
    assert (issue.file, issue.line, issue.step, issue.field) == ("wf.yaml", 8, "b", expected_field)


def test_an_unsafe_attribute_in_the_output_is_refused(registry: ToolRegistry) -> None:
    issues = problems(
        """
        name: x
        steps: [{id: a, uses: echo}]
        output: {v: "${{ steps.a.output.__class__.__mro__ }}"}
        """,
        registry,
    )
    assert [(i.line, i.step, i.field) for i in issues] == [(4, None, "output.v")]
    assert "'__class__'" in issues[0].message and "'__mro__'" in issues[0].message
