"""References and expressions: typed, rendered once, sandboxed."""

from __future__ import annotations

import pytest

from dagwright.planner.references import ExpressionError, Ref, expression, render, split

CTX = {
    "inputs": {"n": 3, "name": "ada", "tags": ["x", "y"]},
    "steps": {"a": {"output": {"items": [1, 2, 3], "text": "hi", "nested": {"k": None}}}},
}


def test_a_whole_reference_keeps_its_type() -> None:
    assert render("${{ inputs.n }}", CTX) == 3
    assert render("${{ steps.a.output.items }}", CTX) == [1, 2, 3]
    assert render("${{ steps.a.output.nested.k }}", CTX) is None
    assert render({"deep": ["${{ inputs.tags[1] }}"]}, CTX) == {"deep": ["y"]}


def test_a_reference_inside_text_is_stringified() -> None:
    assert render("n=${{ inputs.n }}", CTX) == "n=3"
    assert render("${{ inputs.n }} ${{ inputs.name }}", CTX) == "3 ada"
    assert render("items: ${{ steps.a.output.items }}", CTX) == "items: [1,2,3]"
    assert render("k=${{ steps.a.output.nested.k }};", CTX) == "k=;"
    assert render(" ${{ inputs.n }}", CTX) == " 3", "surrounding text makes it a string"


def test_items_is_the_field_not_the_dict_method() -> None:
    assert expression("len(steps.a.output.items) >= 3").evaluate(CTX) is True
    assert expression("steps.a.output['items'][0] + inputs.n").evaluate(CTX) == 4


def test_expressions_support_filters_and_tests() -> None:
    assert expression("inputs.name | upper").evaluate(CTX) == "ADA"
    assert expression("inputs.tags | length == 2 and inputs.n is number").evaluate(CTX) is True


def test_rendered_text_is_never_evaluated_again() -> None:
    ctx = {"inputs": {"evil": "${{ inputs.secret }} {{ 7*7 }}", "secret": "s3cret"}}
    assert render("${{ inputs.evil }}", ctx) == "${{ inputs.secret }} {{ 7*7 }}"
    assert render("say ${{ inputs.evil }}", ctx) == "say ${{ inputs.secret }} {{ 7*7 }}"


@pytest.mark.parametrize(
    "source",
    [
        "inputs.__class__",
        "inputs.name.__class__.__mro__",
        "steps.a.output.text.format.__globals__",
        "inputs.name.__init__.__globals__['os']",
    ],
)
def test_the_sandbox_refuses_dunder_access(source: str) -> None:
    with pytest.raises(ExpressionError):
        expression(source).evaluate(CTX)


def test_no_builtins_beyond_the_safe_list() -> None:
    for source in ("open('/etc/passwd')", "__import__('os')", "eval('1')", "range(10**12) | list"):
        with pytest.raises(ExpressionError):
            expression(source).evaluate(CTX)


def test_missing_paths_say_what_is_there() -> None:
    with pytest.raises(
        ExpressionError, match=r"steps.a.output has no field 'txt' \(it has: items, text, nested\)"
    ):
        render("${{ steps.a.output.txt }}", CTX)
    with pytest.raises(ExpressionError, match="has 3 items, no index 5"):
        render("${{ steps.a.output.items[5] }}", CTX)
    with pytest.raises(ExpressionError, match="is a string, it has no 'x'"):
        render("${{ steps.a.output.text.x }}", CTX)


def test_references_are_found_statically() -> None:
    assert expression("steps.a.output.items[0]").refs == (
        Ref("steps", ("a", "output", "items", 0)),
    )
    refs = expression(
        "len(steps.a.output.items) + inputs.n if inputs.flag else steps['b'].output"
    ).refs
    assert set(refs) == {
        Ref("steps", ("a", "output", "items")),
        Ref("inputs", ("n",)),
        Ref("inputs", ("flag",)),
        Ref("steps", ("b", "output")),
    }


def test_split_refuses_unclosed_and_empty_expressions() -> None:
    with pytest.raises(ExpressionError, match="unclosed"):
        split("a ${{ inputs.n")
    with pytest.raises(ExpressionError, match="empty"):
        split("a ${{  }}")
    assert split("plain {{ jinja }} text") == ["plain {{ jinja }} text"]


@pytest.mark.parametrize(("source", "value"), [("true", True), ("False", False), ("none", None)])
def test_jinja_constants_are_constants_not_names(source: str, value: object) -> None:
    expr = expression(source)
    assert expr.evaluate({}) is value
    assert expr.names() == set() and expr.refs == ()


def test_unsafe_names_are_found_statically() -> None:
    assert expression("inputs.__class__").unsafe_names() == ["__class__"]
    assert expression("steps.a.output.x.mro()[1].__subclasses__()").unsafe_names() == [
        "mro",
        "__subclasses__",
    ]
    assert expression("inputs['__k'] ~ inputs.f.func_globals").unsafe_names() == [
        "__k",
        "func_globals",
    ]
    # a single underscore is data: `_id`, `_links` in API responses
    assert expression("steps.a.output._id ~ steps.a.output['_links']").unsafe_names() == []
    assert expression("inputs.x | attr('__dict__')").unsafe_names() == ["__dict__"]
    assert expression("inputs.xs | map(attribute='a.__doc__') | list").unsafe_names() == ["__doc__"]
    assert expression("len(steps.a.output.items) + inputs.n").unsafe_names() == []
    assert expression("steps.a.output['items'][0] | upper").unsafe_names() == []
