"""The ``hf:`` adapter: a local Hugging Face causal LM through Outlines + transformers, with
constrained decoding; its prompt counted against the model's context before anything is
generated. Imports torch, transformers and outlines only when a model is used."""

from __future__ import annotations

import functools
import json
from typing import Any

from dagwright.agents.models import (
    CallTimer,
    M,
    ModelCall,
    ModelError,
    ModelSettings,
    Recorder,
    provider,
)
from dagwright.agents.providers import _last_line

MIN_ANSWER_TOKENS = 256
"""The fewest tokens a local model's context must leave for an answer (or all of its
max_tokens, when fewer): less, and the prompt is refused before anything is generated."""


class OutlinesProvider:
    """A local Hugging Face causal LM through Outlines, with constrained decoding (llguidance):
    the answer cannot leave the schema — with a plan schema, a step cannot name a tool that is
    not registered. Greedy decoding, seeded. Needs ``pip install 'dagwright[local]'``."""

    name = "hf"
    compact = True  # small local models: the planner bounds the plan's size and strings tighter

    def __init__(self, model: str, settings: ModelSettings) -> None:
        try:
            import outlines  # noqa: F401
            import torch  # noqa: F401
            import transformers  # noqa: F401
        except ImportError:
            raise ModelError(
                "hf:… needs the local extra: pip install torch, then pip install 'dagwright[local]'"
            ) from None
        self.model = model
        self.settings = settings
        self._loaded = _load_hf(model)
        self._generators: dict[Any, Any] = {}

    @property
    def model_id(self) -> str:
        config = self._loaded[1].config
        commit = getattr(config, "_commit_hash", None)
        return f"{getattr(config, '_name_or_path', self.model)}" + (f"@{commit}" if commit else "")

    def _generator(self, response_model: Any) -> Any:
        import outlines

        gen = self._generators.get(response_model)
        if gen is None:
            schema = response_model.model_json_schema() if response_model is not None else None
            if schema is None:
                gen = outlines.Generator(self._loaded[0])
            else:
                schema["x-guidance"] = {"whitespace_flexible": False}  # no runaway whitespace
                gen = outlines.Generator(
                    self._loaded[0],
                    outlines.types.JsonSchema(json.dumps(schema)),
                    backend="llguidance",
                )
            self._generators[response_model] = gen
        return gen

    @property
    def context_window(self) -> int | None:
        """The most tokens the model reads and writes together (its position embeddings),
        from its config; None when it does not say."""
        config = self._loaded[1].config
        for name in ("max_position_embeddings", "n_positions", "n_ctx", "seq_length"):
            value = getattr(config, name, None)
            if isinstance(value, int) and value > 0:
                return value
        value = getattr(self._loaded[2], "model_max_length", None)
        return value if isinstance(value, int) and 0 < value < 10_000_000 else None

    @property
    def answer_tokens(self) -> int:
        """The most tokens an answer may take (DAGWRIGHT's max_tokens for the call)."""
        return self.settings.max_tokens

    def count_tokens(self, messages: list[dict[str, Any]]) -> int:
        """The tokens of the prompt these messages make."""
        return self._count(self._prompt(messages))

    def _count(self, text: str) -> int:
        return len(self._loaded[2](text, add_special_tokens=False)["input_ids"])

    def _room(self, prompt: str, messages: list[dict[str, Any]]) -> int:
        """``max_new_tokens`` for this prompt: the answer's budget, within what the model's
        context leaves; a prompt that leaves too little is refused before anything is generated
        (a prompt past the context fails deep inside the model, minutes later)."""
        wanted = self.settings.max_tokens
        window = self.context_window
        if window is None:
            return wanted
        used = self._count(prompt)
        least = min(wanted, MIN_ANSWER_TOKENS)
        if window - used < least:
            parts = ", ".join(
                f"{m.get('role')} {self._count(str(m.get('content') or ''))}" for m in messages
            )
            raise ModelError(
                f"hf:{self.model}: the prompt is {used} tokens ({parts}), which leaves "
                f"{max(0, window - used)} of the model's context of {window} for the answer "
                f"(at least {least} are needed): shorten the prompt, or use a model with a "
                "longer context"
            )
        return min(wanted, window - used)

    def _prompt(self, messages: list[dict[str, Any]]) -> str:
        tokenizer = self._loaded[2]
        if getattr(tokenizer, "chat_template", None):
            return str(
                tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            )
        return "\n\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\n\nassistant: "

    def _generate(
        self, gen: Any, prompt: str, record: Recorder, attempt: int, purpose: str,
        messages: list[dict[str, Any]],
    ) -> tuple[str, CallTimer]:  # fmt: skip
        import torch

        room = self._room(prompt, messages)
        request = {"prompt": prompt, "max_new_tokens": room, "do_sample": False,
                   "seed": self.settings.seed}  # fmt: skip
        timer = CallTimer(ModelCall(model=f"hf:{self.model}", provider="hf", request=request,
                                    attempt=attempt, purpose=purpose))  # fmt: skip
        torch.manual_seed(self.settings.seed)
        try:
            text = gen(prompt, max_new_tokens=room, do_sample=False)
        except Exception as exc:  # noqa: BLE001
            timer.done(record, error=f"{type(exc).__name__}: {exc}", model_id=self.model_id)
            raise ModelError(f"hf:{self.model}: {type(exc).__name__}: {exc}") from None
        return str(text), timer

    def structured(
        self, messages: list[dict[str, Any]], response_model: type[M], *, max_retries: int,
        record: Recorder, purpose: str = "",
    ) -> M:  # fmt: skip
        gen = self._generator(response_model)
        prompt = self._prompt(messages)
        last = ""
        for attempt in range(1, max_retries + 2):
            text, timer = self._generate(gen, prompt, record, attempt, purpose, messages)
            try:
                answer = response_model.model_validate_json(text)
            except Exception as exc:  # noqa: BLE001 - pydantic's ValidationError, fed back
                last = str(exc)
                timer.done(
                    record, response=text, model_id=self.model_id, error=f"invalid answer: {exc}"
                )
                prompt += f"{text}\n\nThat answer was invalid:\n{exc}\nWrite a corrected answer:\n"
                continue
            timer.done(record, response=text, model_id=self.model_id)
            return answer
        tries = max_retries + 1
        raise ModelError(
            f"hf:{self.model} gave no valid answer in {tries} attempt{'s' if tries != 1 else ''}: "
            f"{_last_line(Exception(last))}",
            attempts=max_retries + 1,
            last_error=last,
        )

    def text(self, messages: list[dict[str, Any]], *, record: Recorder, purpose: str = "") -> str:
        text, timer = self._generate(
            self._generator(None), self._prompt(messages), record, 1, purpose, messages
        )
        timer.done(record, response=text, model_id=self.model_id)
        return text

    def chat(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]], *, record: Recorder,
        purpose: str = "",
    ) -> dict[str, Any]:  # fmt: skip
        raise ModelError(
            f"hf:{self.model}: local models cannot call tools (give tools to an openai: or "
            "anthropic: agent)"
        )


@functools.lru_cache(maxsize=4)
def _load_hf(model: str) -> tuple[Any, Any, Any]:
    """(outlines model, transformers model, tokenizer), loaded once per process. A repo id is
    downloaded by transformers on first use; a local path loads offline."""
    import outlines
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf_model = AutoModelForCausalLM.from_pretrained(model)
    tokenizer = AutoTokenizer.from_pretrained(model)
    # outlines annotates the slow tokenizer class (PreTrainedTokenizer) and takes the fast one that
    # AutoTokenizer gives too; `unused-ignore`: older transformers type them so that it matches
    outlines_model = outlines.from_transformers(
        hf_model,
        tokenizer,  # type: ignore[arg-type, unused-ignore]
    )
    return outlines_model, hf_model, tokenizer


@provider("hf")
def _hf(model: str, settings: ModelSettings) -> OutlinesProvider:
    return OutlinesProvider(model, settings)
