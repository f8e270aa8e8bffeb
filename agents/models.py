"""Model providers, named by a model string: ``openai:<model>``, ``anthropic:<model>``,
``hf:<repo-or-path>``. One small adapter per provider, in a registry (no if/elif over modes).

Every call is made at temperature 0 (with a seed where the provider takes one) and reported to a
``Recorder`` as a ``ModelCall``: the exact model id, the request, the response — or the missing
response and the error — token usage and latency. Executors write these into the trace, so a run
can be inspected and, later, replayed without calling the model again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel

from dagwright.errors import DagwrightError

M = TypeVar("M", bound=BaseModel)


@dataclass
class ModelCall:
    """One request to a model, as the trace records it."""

    model: str
    provider: str
    request: dict[str, Any]
    model_id: str | None = None
    response: Any = None
    error: str | None = None
    usage: dict[str, Any] | None = None
    latency: float | None = None
    attempt: int = 1
    cache_hit: bool = False
    purpose: str = ""
    request_key: str | None = None
    """The request's cache key (model, messages, schema, parameters): replay matches on it."""
    params: dict[str, Any] | None = None
    """The parameters the step asked with (temperature, seed, max_tokens)."""
    replayed: bool = False
    """Served from a recorded trace by ``dagwright replay``: no provider was called."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


Recorder = Callable[[ModelCall], None]


def discard(_: ModelCall) -> None:
    """A recorder that keeps nothing (for callers that record elsewhere)."""


@dataclass(frozen=True)
class ModelSettings:
    base_url: str | None = None
    """OpenAI-compatible endpoint (OpenAI, vLLM, Ollama, llama.cpp server, LiteLLM proxy)."""
    api_key: str | None = None
    seed: int = 0
    timeout: float = 120.0
    max_tokens: int = 2048

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> ModelSettings:
        """From dagwright's ``Settings`` (DAGWRIGHT_MODEL_BASE_URL, _API_KEY, _SEED)."""
        values = {
            "base_url": settings.model_base_url or None,
            "api_key": settings.model_api_key or None,
            "seed": settings.model_seed,
        }
        return cls(**{**values, **overrides})


class Provider(Protocol):
    name: str
    model: str

    def structured(
        self, messages: list[dict[str, Any]], response_model: type[M], *, max_retries: int,
        record: Recorder, purpose: str = "",
    ) -> M:  # fmt: skip
        """A validated ``response_model`` instance; validation errors are fed back to the model
        up to ``max_retries`` times. Raises ModelError when no valid answer came."""

    def text(
        self, messages: list[dict[str, Any]], *, record: Recorder, purpose: str = ""
    ) -> str: ...


class ModelError(DagwrightError):
    """A model gave no usable answer (after its retries), or could not be reached."""

    def __init__(self, message: str, *, attempts: int = 1, last_error: str | None = None) -> None:
        super().__init__(message)
        self.attempts = attempts
        self.last_error = last_error


ProviderFactory = Callable[[str, ModelSettings], Provider]
_PROVIDERS: dict[str, ProviderFactory] = {}


def provider(prefix: str) -> Callable[[ProviderFactory], ProviderFactory]:
    """Register an adapter for model strings that start with ``prefix:``."""

    def register(factory: ProviderFactory) -> ProviderFactory:
        _PROVIDERS[prefix] = factory
        return factory

    return register


def connect(model: str, settings: ModelSettings | None = None) -> Provider:
    """The provider for a model string such as ``openai:gpt-4o-mini``."""
    from dagwright.agents import providers as _  # noqa: F401  (registers the adapters)

    prefix, sep, name = model.partition(":")
    if not sep or not name:
        raise DagwrightError(
            f"model {model!r}: write it as PROVIDER:MODEL, e.g. openai:gpt-4o-mini "
            f"(providers: {', '.join(sorted(_PROVIDERS))})"
        )
    factory = _PROVIDERS.get(prefix)
    if factory is None:
        raise DagwrightError(
            f"model {model!r}: unknown provider {prefix!r}; known: {', '.join(sorted(_PROVIDERS))}"
        )
    return factory(name, settings or ModelSettings())


@dataclass
class CallTimer:
    """Builds a ModelCall around one request: start it, then finish with a response or error."""

    call: ModelCall
    started: float = field(default_factory=time.perf_counter)

    def done(self, record: Recorder, **fields: Any) -> ModelCall:
        for key, value in fields.items():
            setattr(self.call, key, value)
        self.call.latency = round(time.perf_counter() - self.started, 6)
        record(self.call)
        return self.call


__all__ = [
    "CallTimer",
    "ModelCall",
    "ModelError",
    "ModelSettings",
    "Provider",
    "Recorder",
    "connect",
    "discard",
    "provider",
]
