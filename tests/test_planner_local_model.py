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


def build_tiny_model(folder: Path) -> Path:
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
        n_positions=4096,
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
