"""Typed settings, read once at the edge (CLI, worker). Core code receives values.

``Settings.from_env()`` reads the ``DAGWRIGHT_*`` environment variables; ``Settings(...)`` takes
values from the caller only (never os.environ, never a .env file).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from types import UnionType
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union, get_args, get_origin
from urllib.parse import unquote, urlsplit

from pydantic import Field, PrivateAttr, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from dagwright.errors import DagwrightError
from dagwright.secret_values import NO_SECRETS, SECRET_PREFIX, SecretValues, read_secrets

if TYPE_CHECKING:
    from dagwright.planner.limits import Limits

DEFAULT_DB = ".dagwright/trace.db"
DEFAULT_BROKER = "redis://127.0.0.1:6379/0"
PREFIX = "DAGWRIGHT_"
_IGNORED_PREFIX = "DAGWRIGHT_TEST_"  # the test suite's own variables

PositiveInt = Annotated[int, Field(gt=0)]
PositiveSeconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=PREFIX,
        frozen=True,
        extra="forbid",
        use_attribute_docstrings=True,
        # the fields model_* are ours; only keep pydantic's own methods from being shadowed
        protected_namespaces=("model_validate", "model_dump", "settings_customise_sources"),
    )

    db: str = DEFAULT_DB
    """DAGWRIGHT_DB: trace store, a SQLite file, ``sqlite:///path`` or ``postgresql://…``."""
    index_dir: str = ""
    """DAGWRIGHT_INDEX_DIR: the folder of retrieval indexes (``dagwright index``, the
    ``retrieve`` tool); empty means ``indexes/`` beside the SQLite trace store (for a PostgreSQL
    store, ``.dagwright/indexes``)."""
    tools: tuple[str, ...] = ()
    """DAGWRIGHT_TOOLS: modules of user tools loaded for every workflow (comma-separated)."""
    max_parallel: PositiveInt | None = None
    """DAGWRIGHT_MAX_PARALLEL: attempts the local executor runs at once; unset: up to 128, of
    which up to 32 of plain-function tools (each holds a thread; async tools hold none)."""
    broker: str = DEFAULT_BROKER
    """DAGWRIGHT_BROKER: the Celery broker (Redis)."""
    heartbeat: PositiveSeconds = 5.0
    """DAGWRIGHT_HEARTBEAT: seconds between a worker's heartbeats for a running attempt; an
    attempt silent for 3 heartbeats is treated as lost and sent again."""
    sweep_interval: PositiveSeconds = 5.0
    """DAGWRIGHT_SWEEP_INTERVAL: seconds between a worker's sweeps for stalled runs."""
    redispatch_after: PositiveSeconds = 60.0
    """DAGWRIGHT_REDISPATCH_AFTER: a dispatched step no worker has started after this many
    seconds is sent again (its message was lost, e.g. the broker restarted)."""
    visibility_timeout: PositiveSeconds = 3600.0
    """DAGWRIGHT_VISIBILITY_TIMEOUT: seconds before Redis hands an unacknowledged message to
    another worker; keep it above the longest step timeout."""
    eval_timeout: PositiveSeconds = 10.0
    """DAGWRIGHT_EVAL_TIMEOUT: seconds for resolving a step's arguments, and for its checks,
    when the step has no ``timeout:`` (with one, its timeout covers the whole attempt); past it
    the attempt is ``timed_out``."""
    max_workflow_bytes: PositiveInt = 1 << 20
    """DAGWRIGHT_MAX_WORKFLOW_BYTES: the largest workflow file read (1 MiB), checked before it is
    parsed."""
    max_steps: PositiveInt = 10_000
    """DAGWRIGHT_MAX_STEPS: the most steps a workflow file may have."""
    max_depth: PositiveInt = 64
    """DAGWRIGHT_MAX_DEPTH: the deepest nesting of lists and mappings in a workflow file or a
    run input."""
    max_input_bytes: PositiveInt = 1 << 20
    """DAGWRIGHT_MAX_INPUT_BYTES: the largest run input (1 MiB; a string as UTF-8, other data as
    JSON)."""
    max_output_bytes: PositiveInt = 16 << 20
    """DAGWRIGHT_MAX_OUTPUT_BYTES: the largest output of a step's attempt, as JSON (16 MiB); a
    bigger one fails the attempt (not retried) and is not recorded."""
    http_max_bytes: PositiveInt = 10 << 20
    """DAGWRIGHT_HTTP_MAX_BYTES: the most response bytes an ``http.request`` step may allow
    itself with ``max_bytes`` (10 MiB; its default cap is 1 MiB)."""

    model: str = ""
    """DAGWRIGHT_MODEL: the model ``llm.generate`` uses when a step names none."""
    model_cache: str = ""
    """DAGWRIGHT_MODEL_CACHE: a redis:// URL for the model-call cache (else the trace store)."""
    model_base_url: str = ""
    """DAGWRIGHT_MODEL_BASE_URL: the OpenAI-compatible endpoint for ``openai:`` models (vLLM,
    Ollama, llama.cpp server, LiteLLM proxy); empty means OpenAI's own."""
    openai_mode: Literal["tools", "json_schema", "json", "md_json"] = "tools"
    """DAGWRIGHT_OPENAI_MODE: how ``openai:`` models give structured answers (Instructor's
    mode): ``tools`` (a tool call), ``json_schema`` (``response_format`` with the schema),
    ``json`` (``response_format: json_object``, the schema in the prompt) or ``md_json`` (JSON
    in the text; for servers that constrain neither). A model string may choose its own:
    ``openai:MODEL?mode=json_schema``."""
    model_api_key: str = ""
    """DAGWRIGHT_MODEL_API_KEY: the key sent to every provider's endpoint; when empty, each
    provider's own key below."""
    openai_api_key: str = ""
    """DAGWRIGHT_OPENAI_API_KEY: the key for ``openai:`` models when DAGWRIGHT_MODEL_API_KEY is
    empty; ``from_env`` falls back to OPENAI_API_KEY."""
    anthropic_api_key: str = ""
    """DAGWRIGHT_ANTHROPIC_API_KEY: the key for ``anthropic:`` models when DAGWRIGHT_MODEL_API_KEY
    is empty; ``from_env`` falls back to ANTHROPIC_API_KEY."""
    model_seed: int = 0
    """DAGWRIGHT_MODEL_SEED: the seed sent with every model request, where supported."""
    secrets_file: str = ""
    """DAGWRIGHT_SECRETS_FILE: a file of secrets that steps read as ``${{ secrets.NAME }}``,
    one ``NAME=value`` per line (dotenv-style, ``secret_values``); each
    ``DAGWRIGHT_SECRET_<NAME>`` variable sets one too, and wins over the file."""
    _step_secrets: SecretValues = PrivateAttr(default=NO_SECRETS)

    workflows: str = "workflows"
    """DAGWRIGHT_WORKFLOWS: the folder of known workflows (YAML files, each known by its
    ``name``) that the API and the Celery ``dagwright.submit`` task run by name."""
    api_tokens: tuple[str, ...] = ()
    """DAGWRIGHT_API_TOKENS: bearer tokens the API accepts (comma-separated). With none, the
    API takes requests without a token, and ``serve`` binds to a loopback address only."""
    api_max_body: PositiveInt = 2 << 20
    """DAGWRIGHT_API_MAX_BODY: the largest request body the API reads (2 MiB); larger: 413."""
    api_rate: PositiveSeconds = 50.0
    """DAGWRIGHT_API_RATE: submissions per second allowed per token (or per client address
    without tokens), sustained; more: 429 with ``Retry-After``."""
    api_burst: PositiveInt = 100
    """DAGWRIGHT_API_BURST: submissions a token may make at once above the sustained rate."""
    api_executor: Literal["local", "celery"] = "local"
    """DAGWRIGHT_API_EXECUTOR: where the API's runs execute: ``local`` (the server's own threads)
    or ``celery`` (the workers of DAGWRIGHT_BROKER); ``serve --executor`` sets it."""
    api_runs: PositiveInt = 4
    """DAGWRIGHT_API_RUNS: step attempts the API server runs at once in its own process (the
    embedded default, when no broker is configured for it: ``serve --executor local``)."""
    api_url: str = ""
    """DAGWRIGHT_API_URL: the API that ``submit``, ``status`` and ``follow`` talk to."""
    api_token: str = ""
    """DAGWRIGHT_API_TOKEN: the bearer token ``submit``, ``status``, ``follow`` and
    ``dagwright.client`` send."""

    @field_validator("tools", "api_tokens", mode="before")
    @classmethod
    def split_tools(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(t.strip() for t in value.split(",") if t.strip())
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Only the values passed in: from_env() passes the environment's, so constructing
        # Settings never reads os.environ or a .env file behind the caller's back.
        return (init_settings,)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """The settings in ``env`` (default: os.environ), and nothing else.

        Raises DagwrightError for an unknown ``DAGWRIGHT_*`` name or a value of the wrong type,
        naming the variable. An empty value means the default.
        """
        env = os.environ if env is None else env
        _reject_unknown(env, _env_names(cls))
        values = _Variables(cls, env)()
        for name, variable in _PROVIDER_KEYS.items():  # the providers' own variables
            if name not in values and env.get(variable):
                values[name] = env[variable]
        try:
            settings = cls(**values)
        except ValidationError as exc:
            raise DagwrightError(_explain(exc, cls.model_fields)) from None
        settings._step_secrets = read_secrets(env, settings.secrets_file)
        return settings

    def limits(self) -> Limits:
        """The DAGWRIGHT_MAX_* limits, as the value core code receives."""
        from dagwright.planner.limits import Limits  # the planner package is not cheap

        return Limits(
            workflow_bytes=self.max_workflow_bytes,
            steps=self.max_steps,
            depth=self.max_depth,
            input_bytes=self.max_input_bytes,
            output_bytes=self.max_output_bytes,
        )

    def step_secrets(self) -> SecretValues:
        """The secrets steps may read (``${{ secrets.NAME }}``): read by ``from_env`` from the
        DAGWRIGHT_SECRET_* variables and DAGWRIGHT_SECRETS_FILE; none otherwise."""
        return self._step_secrets

    def secrets(self) -> tuple[str, ...]:
        """The values that must never be recorded or printed: the API keys, the passwords
        in the URLs (trace store, broker, model cache, model endpoint) and the step secrets
        (as they are and URL-encoded)."""
        keys = [self.model_api_key, self.openai_api_key, self.anthropic_api_key, self.api_token]
        keys += self.api_tokens
        keys += self._step_secrets.redaction_forms()
        for url in (self.db, self.broker, self.model_cache, self.model_base_url):
            try:
                password = urlsplit(url).password if "@" in url else None
            except ValueError:  # not a URL: no password in it that we could find
                password = None
            if password:
                keys += [password, unquote(password)]
        return tuple(dict.fromkeys(k for k in keys if k))


_PROVIDER_KEYS = {"openai_api_key": "OPENAI_API_KEY", "anthropic_api_key": "ANTHROPIC_API_KEY"}
"""Settings whose value falls back to a provider's own, standard variable."""


class _Variables(PydanticBaseSettingsSource):
    """The ``DAGWRIGHT_*`` values of one mapping, as strings; empty values are left out."""

    def __init__(self, settings_cls: type[BaseSettings], env: Mapping[str, str]) -> None:
        super().__init__(settings_cls)
        self._env = env

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        raw = self._env.get(_env_name(field_name))
        return (raw or None), field_name, False

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name, field in self.settings_cls.model_fields.items():
            raw, key, _ = self.get_field_value(field, name)
            if raw is not None:
                values[key] = raw
        return values


def _env_name(field_name: str) -> str:
    return f"{PREFIX}{field_name.upper()}"


def _env_names(settings_cls: type[BaseSettings]) -> list[str]:
    return [_env_name(name) for name in settings_cls.model_fields]


def _reject_unknown(env: Mapping[str, str], known: list[str]) -> None:
    unknown = sorted(
        k
        for k in env
        if k.startswith(PREFIX)
        and k not in known
        and not k.startswith((_IGNORED_PREFIX, SECRET_PREFIX))
    )
    if not unknown:
        return
    named = []
    for name in unknown:
        # compare past the shared prefix, or every DAGWRIGHT_* name looks close
        suffixes = [k.removeprefix(PREFIX) for k in known]
        close = difflib.get_close_matches(name.removeprefix(PREFIX), suffixes, n=1)
        named.append(f"{name} (did you mean {PREFIX}{close[0]}?)" if close else name)
    raise DagwrightError(
        f"unknown setting(s) {', '.join(named)}; known: {', '.join(sorted(known))}"
    )


def _explain(exc: ValidationError, fields: Mapping[str, FieldInfo]) -> str:
    problems = []
    for error in exc.errors():
        name = str(error["loc"][0]) if error["loc"] else ""
        field = fields.get(name)
        expected = _expected(field) if field is not None else None
        what = f"must be {expected}" if expected else error["msg"]
        problems.append(f"{_env_name(name)} {what}, got {error['input']!r}")
    return "; ".join(problems)


def _expected(field: FieldInfo) -> str | None:
    annotation, metadata = field.annotation, list(field.metadata)
    inner = [a for a in get_args(annotation) if a is not type(None)]
    if get_origin(annotation) in (Union, UnionType) and len(inner) == 1:  # X | None: unset
        annotation = inner[0]
        if get_origin(annotation) is Annotated:
            annotation, *extra = get_args(annotation)
            for m in extra:  # Field(gt=0) keeps its constraints in its metadata
                metadata += [m, *getattr(m, "metadata", [])]
    kind = "integer" if annotation is int else "number" if annotation is float else None
    if kind is None:
        return None
    if any(getattr(m, "gt", None) == 0 for m in metadata):
        return f"a positive {kind}"
    return f"an {kind}" if kind == "integer" else f"a {kind}"


def tool_settings(ctx: Any) -> Settings:
    """The settings a tool runs under: its driver's, read once at the driver's edge
    (``ToolContext.settings``: the CLI's with its ``--db``, a worker's, the API server's); for a
    tool called outside a driver (a test, an embedder's direct call), the environment's."""
    given = getattr(ctx, "settings", None)
    return given if isinstance(given, Settings) else Settings.from_env()


__all__ = ["DEFAULT_BROKER", "DEFAULT_DB", "Settings", "tool_settings"]
