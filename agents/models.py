"""Model providers, named by a model string: ``openai:<model>``, ``anthropic:<model>``,
``hf:<repo-or-path>``. One small adapter per provider, in a registry (no if/elif over modes).

Every call is made at temperature 0 (with a seed where the provider takes one) and reported to a
``Recorder`` as a ``ModelCall``: the exact model id, the request, the response — or the missing
response and the error — token usage and latency. Executors write these into the trace, so a run
can be inspected and, later, replayed without calling the model again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel

from dagwright.errors import DagwrightError
from dagwright.redact import Redactor

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
    agent: str | None = None
    """In an ``agents.team`` step: the agent that asked (``selector`` for the speaker choice)."""
    turn: int | None = None
    """In an ``agents.team`` step: the turn of the exchange the call belongs to (1 = the first
    agent's answer to the task)."""

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if self.agent is None and self.turn is None:  # not a team's call: as before
            del data["agent"], data["turn"]
        return data


Recorder = Callable[[ModelCall], None]


def discard(_: ModelCall) -> None:
    """A recorder that keeps nothing (for callers that record elsewhere)."""


@dataclass(frozen=True)
class ModelSettings:
    """How providers are reached. The one way to build them from the settings is
    ``from_settings``; a provider asks ``key_for(its name)`` for its credentials."""

    base_url: str | None = None
    """OpenAI-compatible endpoint (OpenAI, vLLM, Ollama, llama.cpp server, LiteLLM proxy)."""
    api_key: str | None = None
    """The key for every provider (DAGWRIGHT_MODEL_API_KEY)."""
    seed: int = 0
    openai_mode: str = "tools"
    """How ``openai:`` models give structured answers (DAGWRIGHT_OPENAI_MODE; a model string's
    ``?mode=`` wins): tools, json_schema, json or md_json."""
    timeout: float = 120.0
    max_tokens: int = 2048
    provider_keys: Mapping[str, str] = field(default_factory=dict, hash=False)
    """Each provider's own key, by provider name (OPENAI_API_KEY, ANTHROPIC_API_KEY), used
    when ``api_key`` is None."""

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> ModelSettings:
        """From dagwright's ``Settings`` (DAGWRIGHT_MODEL_BASE_URL, _API_KEY, _SEED, and each
        provider's key: ``Settings.from_env`` falls back to OPENAI_API_KEY, ANTHROPIC_API_KEY)."""
        keys = {"openai": settings.openai_api_key, "anthropic": settings.anthropic_api_key}
        values = {
            "base_url": settings.model_base_url or None,
            "api_key": settings.model_api_key or None,
            "seed": settings.model_seed,
            "openai_mode": settings.openai_mode,
            "provider_keys": {name: key for name, key in keys.items() if key},
        }
        return cls(**{**values, **overrides})

    def key_for(self, provider: str) -> str | None:
        """The key to send to ``provider`` (None: none; a local endpoint may need none)."""
        return self.api_key or self.provider_keys.get(provider) or None

    def secrets(self) -> tuple[str, ...]:
        return tuple(k for k in (self.api_key, *self.provider_keys.values()) if k)


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

    def chat(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]], *, record: Recorder,
        purpose: str = "",
    ) -> dict[str, Any]:  # fmt: skip
        """One turn of a conversation in which the model may call ``tools`` (OpenAI-style
        function schemas: ``{"name", "description", "parameters"}``). ``messages`` are
        OpenAI-style (``system``, ``user``, ``assistant`` with ``tool_calls``, ``tool``).
        Returns ``{"content": str, "tool_calls": [{"id", "name", "arguments"}]}`` (arguments
        as JSON text), parsed from the raw response the way ``agents.replay`` parses it."""
        ...


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


def providers() -> list[str]:
    """The provider prefixes a model string may start with (``openai``, ``anthropic``, ``hf``)."""
    import dagwright.agents.hf  # noqa: F401  (registers the hf: adapter)
    import dagwright.agents.providers  # noqa: F401  (registers openai: and anthropic:)

    return sorted(_PROVIDERS)


def connect(model: str, settings: ModelSettings | None = None) -> Provider:
    """The provider for a model string such as ``openai:gpt-4o-mini``."""
    import dagwright.agents.hf  # noqa: F401  (registers the hf: adapter)
    import dagwright.agents.providers  # noqa: F401  (registers openai: and anthropic:)

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
    settings = settings or ModelSettings()
    made = factory(name, settings)
    redactor = Redactor(settings.secrets())
    return _Redacted(made, redactor) if redactor else made


class _Redacted:
    """A provider whose errors and recorded calls carry none of the credentials it was given
    (a provider's or a proxy's error may echo the request's headers)."""

    def __init__(self, inner: Provider, redactor: Redactor) -> None:
        self._inner, self._redactor = inner, redactor
        self.name, self.model = inner.name, inner.model

    def __getattr__(self, attr: str) -> Any:  # e.g. ``compact``, ``model_id``
        return getattr(self._inner, attr)

    def _record(self, record: Recorder) -> Recorder:
        r = self._redactor

        def redacted(call: ModelCall) -> None:
            call.request, call.response = r.value(call.request), r.value(call.response)
            call.error = r.text(call.error) if call.error is not None else None
            record(call)

        return redacted

    def _error(self, exc: ModelError) -> ModelError:
        r = self._redactor
        last = r.text(exc.last_error) if exc.last_error is not None else None
        return ModelError(r.text(str(exc)), attempts=exc.attempts, last_error=last)

    def structured(
        self, messages: list[dict[str, Any]], response_model: type[M], *, max_retries: int,
        record: Recorder, purpose: str = "",
    ) -> M:  # fmt: skip
        try:
            return self._inner.structured(
                messages, response_model, max_retries=max_retries,
                record=self._record(record), purpose=purpose,
            )  # fmt: skip
        except ModelError as exc:
            raise self._error(exc) from None

    def text(self, messages: list[dict[str, Any]], *, record: Recorder, purpose: str = "") -> str:
        try:
            return self._inner.text(messages, record=self._record(record), purpose=purpose)
        except ModelError as exc:
            raise self._error(exc) from None

    def chat(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]], *, record: Recorder,
        purpose: str = "",
    ) -> dict[str, Any]:  # fmt: skip
        try:
            return self._inner.chat(messages, tools, record=self._record(record), purpose=purpose)
        except ModelError as exc:
            raise self._error(exc) from None


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
    "providers",
]
