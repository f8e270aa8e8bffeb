"""The provider adapters for API models (``openai:``, ``anthropic:``) through Instructor; the
``hf:`` adapter is in ``agents.hf``. Each imports its client library only when it is used."""

from __future__ import annotations

import logging
from typing import Any

from pydantic import BaseModel

from dagwright.agents.models import (
    CallTimer,
    M,
    ModelCall,
    ModelError,
    ModelSettings,
    Recorder,
    provider,
)


def _dump(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    dump = getattr(value, "model_dump", None)
    return dump(mode="json") if callable(dump) else value


class _InstructorCalls:
    """Instructor hooks → one ModelCall per request, validation errors included."""

    def __init__(self, provider_name: str, model: str, purpose: str, mode: str | None) -> None:
        self.provider_name = provider_name
        self.model = model
        self.purpose = purpose
        self.mode = mode  # Instructor's mode for structured answers (openai:), recorded
        self.timers: list[CallTimer] = []
        self.calls: list[ModelCall] = []

    def attach(self, client: Any) -> None:
        client.on("completion:kwargs", self.on_request)
        client.on("completion:response", self.on_response)
        client.on("completion:error", self.on_error)
        client.on("parse:error", self.on_parse_error)

    def on_request(self, *args: Any, **kwargs: Any) -> None:
        request = {
            "mode": self.mode,
            "messages": kwargs.get("messages"),
            "tools": kwargs.get("tools"),
            "tool_choice": kwargs.get("tool_choice"),
            "response_format": kwargs.get("response_format"),
            "temperature": kwargs.get("temperature"),
            "seed": kwargs.get("seed"),
            "max_tokens": kwargs.get("max_tokens"),
        }
        call = ModelCall(
            model=self.model,
            provider=self.provider_name,
            request={k: v for k, v in request.items() if v is not None},
            attempt=len(self.timers) + 1,
            purpose=self.purpose,
        )
        self.timers.append(CallTimer(call))

    def _current(self) -> CallTimer | None:
        return self.timers[-1] if self.timers else None

    def on_response(self, response: Any) -> None:
        timer = self._current()
        if timer is None:
            return
        usage = getattr(response, "usage", None)
        timer.call.response = _dump(response)
        timer.call.model_id = getattr(response, "model", None)
        timer.call.usage = _dump(usage) if usage is not None else None
        timer.call.latency = None

    def on_error(self, error: Exception) -> None:
        timer = self._current()
        if timer is not None:
            timer.call.error = f"{type(error).__name__}: {error}"

    def on_parse_error(self, error: Exception) -> None:
        timer = self._current()
        if timer is not None:
            timer.call.error = f"invalid answer: {error}"

    def flush(self, record: Recorder) -> list[ModelCall]:
        for timer in self.timers:
            self.calls.append(timer.done(record))
        self.timers = []
        return self.calls


class _InstructorProvider:
    """Structured answers through Instructor (tool calling); a subclass holds its SDK's client
    and says how Instructor wraps it."""

    name: str
    model: str
    settings: ModelSettings

    def _instructor(self) -> Any:
        raise NotImplementedError

    def _params(self) -> dict[str, Any]:
        raise NotImplementedError

    def structured(
        self, messages: list[dict[str, Any]], response_model: type[M], *, max_retries: int,
        record: Recorder, purpose: str = "",
    ) -> M:  # fmt: skip
        from instructor.core import InstructorRetryException

        from dagwright.redact import redact_logs

        client = self._instructor()
        redact_logs("instructor", self.settings.secrets())  # it logs errors that may echo keys
        _no_last_resort("instructor")
        calls = _InstructorCalls(self.name, f"{self.name}:{self.model}", purpose,
                                 getattr(self, "mode", None))  # fmt: skip
        calls.attach(client)
        try:
            result = client.chat.completions.create(
                model=self.model,
                response_model=response_model,
                messages=messages,
                max_retries=max_retries,
                **self._params(),
            )
        except InstructorRetryException as exc:
            calls.flush(record)
            unreachable = self._unreachable(exc)
            if unreachable is not None:
                raise ModelError(
                    unreachable, attempts=exc.n_attempts, last_error=str(exc)
                ) from None
            raise ModelError(
                f"{self.name}:{self.model} gave no valid answer in "
                f"{exc.n_attempts} attempt{'s' if exc.n_attempts != 1 else ''}: {_last_line(exc)}",
                attempts=exc.n_attempts,
                last_error=str(exc),
            ) from None
        except Exception as exc:  # noqa: BLE001 - the client's own errors (network, HTTP)
            calls.flush(record)
            raise self._client_error(exc) from None
        calls.flush(record)
        return result  # type: ignore[no-any-return]

    def _client_error(self, exc: Exception) -> ModelError:
        """The client's own error (network, HTTP) as a ModelError that says what to do."""
        unreachable = self._unreachable(exc)
        if unreachable is not None:
            return ModelError(unreachable, last_error=str(exc))
        return ModelError(f"{self.name}:{self.model}: {type(exc).__name__}: {exc}")

    def _unreachable(self, exc: BaseException) -> str | None:
        """When the endpoint could not be reached (refused, unknown host, timed out): which
        one, and the setting that chooses it; else None."""
        seen: BaseException | None = exc
        for _ in range(5):  # the client's error, possibly wrapped by Instructor
            if seen is None:
                return None
            name = type(seen).__name__
            if name in ("APIConnectionError", "APITimeoutError", "ConnectError", "ConnectTimeout"):
                break
            seen = seen.__cause__ or seen.__context__
        else:
            return None
        client = getattr(self, "client", None)  # the subclass's SDK client
        endpoint = _shown_url(str(getattr(client, "base_url", "") or ""))
        reason = str(seen)
        deeper = seen.__cause__
        for _ in range(5):  # the socket's own words: "[Errno 111] Connection refused"
            if deeper is None:
                break
            reason = str(deeper) or reason
            deeper = deeper.__cause__
        what = "timed out" if "Timeout" in type(seen).__name__ else f"failed: {reason}"
        chosen = (
            "DAGWRIGHT_MODEL_BASE_URL chooses it"
            if self.settings.base_url
            else f"{self.name}'s own; DAGWRIGHT_MODEL_BASE_URL chooses another (a local server)"
        )
        return (
            f"{self.name}:{self.model}: could not reach the model endpoint {endpoint} "
            f"(the connection {what}); {chosen}"
        )


OPENAI_MODES = ("tools", "json_schema", "json", "md_json")
"""Instructor's modes an ``openai:`` model may use for structured answers (``?mode=``)."""


def model_options(model: str, known: dict[str, tuple[str, ...]]) -> tuple[str, dict[str, str]]:
    """``llama3.1:8b?mode=json_schema`` → (``llama3.1:8b``, ``{"mode": "json_schema"}``);
    an unknown option or value is a ModelError naming the ones there are."""
    name, sep, query = model.partition("?")
    options: dict[str, str] = {}
    for pair in query.split("&") if sep else []:
        key, _, value = pair.partition("=")
        if key not in known:
            raise ModelError(
                f"model {model!r}: unknown option {key!r}; known: "
                + ", ".join(f"{k}={'|'.join(v)}" for k, v in known.items())
            )
        if value not in known[key]:
            raise ModelError(
                f"model {model!r}: {key}={value!r}: use one of {', '.join(known[key])}"
            )
        options[key] = value
    return name, options


class OpenAIProvider(_InstructorProvider):
    """Any OpenAI-compatible endpoint, through Instructor. Structured answers come in the mode
    the model string (``openai:MODEL?mode=json_schema``) or DAGWRIGHT_OPENAI_MODE chooses:
    ``tools`` (a tool call; the default), ``json_schema`` (``response_format`` with the
    schema), ``json`` (``response_format: json_object``) or ``md_json`` (JSON in the text)."""

    name = "openai"

    def __init__(self, model: str, settings: ModelSettings) -> None:
        try:
            import openai
        except ImportError as exc:  # pragma: no cover - openai comes with instructor
            raise ModelError("openai: pip install instructor (it brings openai)") from exc
        model, options = model_options(model, {"mode": OPENAI_MODES})
        self.mode = options.get("mode", settings.openai_mode)
        if self.mode not in OPENAI_MODES:
            raise ModelError(f"openai mode {self.mode!r}: use one of {', '.join(OPENAI_MODES)}")
        self.model = model
        self.settings = settings
        self.client = openai.OpenAI(
            base_url=settings.base_url,
            api_key=settings.key_for(self.name) or "not-needed",  # never the SDK's own env read
            max_retries=0,  # no HTTP retries hidden inside: every request is recorded
            timeout=settings.timeout,
        )

    def _instructor(self) -> Any:
        import instructor

        return instructor.from_openai(self.client, mode=instructor.Mode[self.mode.upper()])

    def _params(self) -> dict[str, Any]:
        return {
            "temperature": 0,
            "seed": self.settings.seed,
            "max_tokens": self.settings.max_tokens,
        }

    def text(self, messages: list[dict[str, Any]], *, record: Recorder, purpose: str = "") -> str:
        timer = CallTimer(
            ModelCall(
                model=f"{self.name}:{self.model}",
                provider=self.name,
                request={"messages": messages, "temperature": 0, "seed": self.settings.seed},
                purpose=purpose,
            )
        )
        try:
            response = self.client.chat.completions.create(
                model=self.model,
                messages=messages,  # type: ignore[arg-type]
                temperature=0,
                seed=self.settings.seed,
                max_tokens=self.settings.max_tokens,
            )
        except Exception as exc:  # noqa: BLE001
            timer.done(record, error=f"{type(exc).__name__}: {exc}")
            raise self._client_error(exc) from None
        text = response.choices[0].message.content or ""
        timer.done(
            record,
            response=_dump(response),
            model_id=response.model,
            usage=_dump(response.usage) if response.usage else None,
        )
        return text

    def chat(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]], *, record: Recorder,
        purpose: str = "",
    ) -> dict[str, Any]:  # fmt: skip
        from dagwright.agents.chat import openai_chat

        return openai_chat(self, messages, tools, record, purpose)


def _no_last_resort(logger: str) -> None:
    """Instructor logs each failed request as a warning; with no logging configured, Python
    prints those on stderr ("API call failed on attempt 1 …") beside dagwright's own, better
    message (and the trace has the call). A NullHandler keeps them off a bare terminal; an
    application that configures logging still gets them."""
    log = logging.getLogger(logger)
    if not any(isinstance(h, logging.NullHandler) for h in log.handlers):
        log.addHandler(logging.NullHandler())


def _shown_url(url: str) -> str:
    """An endpoint as shown in an error: without a user or password in it."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.username is None and parts.password is None:
        return url.rstrip("/")
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc)).rstrip("/")


def _last_line(exc: Exception) -> str:
    """The last line that says something (not pydantic's "For further information visit …")."""
    text = [
        line.strip()
        for line in str(exc).strip().splitlines()
        if line.strip() and not line.strip().startswith("For further information visit")
    ]
    return text[-1][:500] if text else type(exc).__name__


@provider("openai")
def _openai(model: str, settings: ModelSettings) -> OpenAIProvider:
    return OpenAIProvider(model, settings)


class AnthropicProvider(_InstructorProvider):
    """Anthropic's Messages API through Instructor (tool use), when the package is installed.
    (This SDK's Messages API takes neither a seed nor a temperature: the request is recorded as
    sent.)"""

    name = "anthropic"

    def __init__(self, model: str, settings: ModelSettings) -> None:
        try:
            import anthropic
        except ImportError:
            raise ModelError(
                "anthropic:… needs the anthropic package: pip install anthropic"
            ) from None
        self.model, _ = model_options(model, {})  # no options: a `?` is a mistake
        self.settings = settings
        self.client = anthropic.Anthropic(
            api_key=settings.key_for(self.name) or "not-needed",
            base_url=settings.base_url,
            max_retries=0,
            timeout=settings.timeout,
        )

    def _instructor(self) -> Any:
        import instructor

        return instructor.from_anthropic(self.client, mode=instructor.Mode.TOOLS)

    def _params(self) -> dict[str, Any]:
        return {"max_tokens": self.settings.max_tokens}

    def text(self, messages: list[dict[str, Any]], *, record: Recorder, purpose: str = "") -> str:
        system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
        chat = [m for m in messages if m["role"] != "system"]
        timer = CallTimer(
            ModelCall(model=f"{self.name}:{self.model}", provider=self.name,
                      request={"system": system, "messages": chat, **self._params()}, purpose=purpose)
        )  # fmt: skip
        optional: dict[str, Any] = {"system": system} if system else {}
        try:
            response = self.client.messages.create(
                model=self.model,
                messages=chat,  # type: ignore[arg-type]  # plain dicts of the SDK's shape
                **optional,
                **self._params(),
            )
        except Exception as exc:  # noqa: BLE001
            timer.done(record, error=f"{type(exc).__name__}: {exc}")
            raise self._client_error(exc) from None
        text = "".join(getattr(block, "text", "") for block in response.content)
        timer.done(
            record, response=_dump(response), model_id=response.model, usage=_dump(response.usage)
        )
        return text

    def chat(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]], *, record: Recorder,
        purpose: str = "",
    ) -> dict[str, Any]:  # fmt: skip
        from dagwright.agents.chat import anthropic_chat

        return anthropic_chat(self, messages, tools, record, purpose)


@provider("anthropic")
def _anthropic(model: str, settings: ModelSettings) -> AnthropicProvider:
    return AnthropicProvider(model, settings)
