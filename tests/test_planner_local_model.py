"""The hf: provider (Outlines + transformers, constrained decoding) on a tiny model built here.

No model can be downloaded in CI: the test trains a byte-level BPE tokenizer with `tokenizers`
and saves a small random-initialised GPT-2 with `save_pretrained`, then loads it through the real
loading code (`hf:<path>`). A random model writes nonsense, but constrained decoding must keep
every plan inside the schema: only registered tools, every bound respected.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import pytest
from pydantic import Field

pytest.importorskip("outlines", reason="the local extra: pip install 'dagwright[local]'")

from dagwright.agents.models import ModelCall, ModelSettings, connect  # noqa: E402
from dagwright.planner.llm import draft_model, messages_for  # noqa: E402
from dagwright.tools import ToolRegistry  # noqa: E402

TASKS = [
    "Upper-case the greeting, then count its letters",
    "Add two and three",
    "Shout the word hello twice",
    "Compute 4 plus 5 and shout the result",
    "Count the letters of a long word",
    "Make a greeting loud",
    "Add numbers in parallel, then add the results",
    "Shout three words",
    "Count letters of the loud greeting",
    "Add 10 and 20, then shout it",
    "Say hello loudly",
    "Sum of one and one",
    "Upper-case a name",
    "Count letters in dagwright",
    "Two independent additions",
    "Shout, then count",
    "Add then add again",
    "Loud workflow engine",
    "Count and add",
    "A plan with one step",
]


def build_tiny_model(folder: Path, positions: int = 4096) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<eos>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    corpus = ['{"name":"plan","steps":[{"id":"a","uses":"text.shout","with":{"text":"hi"}}]}'] * 20
    corpus += ["${{ steps.a.output }}", *TASKS]
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>")
    config = GPT2Config(
        vocab_size=len(fast),
        n_positions=positions,
        n_embd=64,
        n_layer=2,
        n_head=2,
        bos_token_id=0,
        eos_token_id=0,
    )
    import torch

    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture
def tools() -> ToolRegistry:
    registry = ToolRegistry()

    def shout(text: Annotated[str, Field(max_length=20)]) -> str:
        return text.upper() + "!"

    def add(a: Annotated[int, Field(ge=0, le=99)], b: Annotated[int, Field(ge=0, le=99)]) -> int:
        return a + b

    def count(text: Annotated[str, Field(max_length=20)]) -> int:
        return len(text)

    registry.register(shout, name="text.shout")
    registry.register(add, name="math.add")
    registry.register(count, name="text.count")
    return registry


def test_twenty_plans_from_a_tiny_local_model_stay_in_the_schema(
    tiny_model: Path, tools: ToolRegistry
) -> None:
    provider = connect(f"hf:{tiny_model}", ModelSettings(seed=3, max_tokens=1000))
    schema = draft_model(tools, compact=True, check=False)
    calls: list[ModelCall] = []
    timings = []
    for task in TASKS:
        started = time.perf_counter()
        draft = provider.structured(messages_for(task, tools, examples=[]), schema, max_retries=0,
                                    record=calls.append, purpose="plan")  # fmt: skip
        timings.append(time.perf_counter() - started)
        data = draft.as_data()
        assert 1 <= len(data["steps"]) <= 3
        assert {s["uses"] for s in data["steps"]} <= set(tools.names()), "only registered tools"
        for step in data["steps"]:
            with_ = step.get("with") or {}
            for value in with_.values():
                assert isinstance(value, int | str)
            if step["uses"] == "math.add":
                assert all(0 <= v <= 99 for v in with_.values() if isinstance(v, int)), (
                    "bounds hold"
                )
    assert len(calls) == 20 and all(c.error is None for c in calls)
    assert calls[0].model_id and str(tiny_model) in calls[0].model_id
    assert calls[0].request["do_sample"] is False
    first, rest = timings[0], sorted(timings[1:])
    print(f"\nhf: tiny model on CPU: first plan {first:.2f}s (compiles the constraint), "
          f"then median {rest[len(rest) // 2]:.2f}s per plan")  # fmt: skip


def test_a_missing_local_model_says_so(tmp_path: Path) -> None:
    from dagwright.errors import DagwrightError

    with pytest.raises((DagwrightError, OSError)):
        connect(f"hf:{tmp_path / 'nothing-here'}")


@pytest.fixture(scope="module")
def short_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with a context of 1500 tokens (its 400-token vocabulary makes text long):
    the planner's prompt fits with one long example, not two."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-gpt2-1500"), positions=1500)


def test_a_prompt_past_the_context_is_refused_before_generating(short_model: Path) -> None:
    from dagwright.agents.models import ModelError

    provider = connect(f"hf:{short_model}", ModelSettings(max_tokens=300))
    assert provider.context_window == 1500
    calls: list[ModelCall] = []
    long_task = "Shout the word hello " * 300
    with pytest.raises(ModelError) as refused:
        provider.text([{"role": "user", "content": long_task}], record=calls.append)
    message = str(refused.value)
    assert message.startswith(f"hf:{short_model}: the prompt is ")
    assert (
        "(user " in message
        and "of the model's context of 1500 for the answer (at least 256" in (message)
    )
    assert calls == [], "nothing was generated (or recorded as a call)"


def test_the_planner_budgets_its_examples_and_names_what_is_too_long(
    short_model: Path, tools: ToolRegistry
) -> None:
    from dagwright.planner.llm import PlanningFailed, fit_examples, plan

    provider = connect(f"hf:{short_model}", ModelSettings(seed=3, max_tokens=200))
    example = (
        "name: shout\nsteps:\n  - id: a\n    uses: text.shout\n    with: {text: hi}\n"
    ) * 8  # a long example plan
    notes: list[str] = []
    kept = fit_examples("Say hello loudly", tools, [example, example], provider, notes)
    room = 1500 - 200
    assert provider.count_tokens(messages_for("Say hello loudly", tools, kept)) <= room
    assert kept == [example] and notes == [
        "1 of 2 example plans left out of the prompt to fit the model's context of 1500 tokens"
    ]
    calls: list[ModelCall] = []
    notes = []
    try:  # a random model's plan may be invalid; what matters is that it was asked within bounds
        plan("Say hello loudly", tools, provider, examples=[example, example], max_repairs=0,
             record=calls.append, notes=notes)  # fmt: skip
    except PlanningFailed as exc:
        assert "gave no valid answer in 1 attempt:" in str(exc)
    assert len(calls) == 1 and calls[0].request["prompt"].count("Example plan:") == 1
    prompt = provider._count(calls[0].request["prompt"])
    assert prompt + calls[0].request["max_new_tokens"] <= 1500 and len(notes) == 1
    calls = []
    # a task that cannot fit even alone: refused at once, naming the long part
    with pytest.raises(PlanningFailed) as refused:
        plan("Shout the word hello " * 200, tools, provider, examples=[], record=calls.append)
    message = str(refused.value)
    assert "the planner's prompt is " in message and "over the 1300 that" in message
    assert message.split("beside 200 for the plan; ")[1].startswith("the task: "), "the longest"
    assert "the tool list (each tool's argument schema): " in message
    assert calls == []
