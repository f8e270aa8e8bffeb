"""Typed settings, read once at the edge (CLI, worker). Core code receives values."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields

from dagwright.errors import DagwrightError

DEFAULT_DB = ".dagwright/trace.db"
DEFAULT_BROKER = "redis://127.0.0.1:6379/0"


@dataclass(frozen=True)
class Settings:
    db: str = DEFAULT_DB
    """DAGWRIGHT_DB: trace store, a SQLite file, ``sqlite:///path`` or ``postgresql://…``."""
    tools: tuple[str, ...] = ()
    """DAGWRIGHT_TOOLS: modules of user tools loaded for every workflow (comma-separated)."""
    max_parallel: int = 8
    """DAGWRIGHT_MAX_PARALLEL: attempts the local executor runs at once."""
    broker: str = DEFAULT_BROKER
    """DAGWRIGHT_BROKER: the Celery broker (Redis)."""
    heartbeat: float = 5.0
    """DAGWRIGHT_HEARTBEAT: seconds between a worker's heartbeats for a running attempt; an
    attempt silent for 3 heartbeats is treated as lost and sent again."""
    sweep_interval: float = 5.0
    """DAGWRIGHT_SWEEP_INTERVAL: seconds between a worker's sweeps for stalled runs."""
    redispatch_after: float = 60.0
    """DAGWRIGHT_REDISPATCH_AFTER: a dispatched step no worker has started after this many
    seconds is sent again (its message was lost, e.g. the broker restarted)."""
    visibility_timeout: float = 3600.0
    """DAGWRIGHT_VISIBILITY_TIMEOUT: seconds before Redis hands an unacknowledged message to
    another worker; keep it above the longest step timeout."""

    model: str = ""
    """DAGWRIGHT_MODEL: the model ``llm.generate`` uses when a step names none."""
    model_cache: str = ""
    """DAGWRIGHT_MODEL_CACHE: a redis:// URL for the model-call cache (else the trace store)."""
    model_base_url: str = ""
    """DAGWRIGHT_MODEL_BASE_URL: the OpenAI-compatible endpoint for ``openai:`` models (vLLM,
    Ollama, llama.cpp server, LiteLLM proxy); empty means OpenAI's own."""
    model_api_key: str = ""
    """DAGWRIGHT_MODEL_API_KEY: the key for that endpoint (else OPENAI_API_KEY is used)."""
    model_seed: int = 0
    """DAGWRIGHT_MODEL_SEED: the seed sent with every model request, where supported."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        known = {f"DAGWRIGHT_{f.name.upper()}": f for f in fields(cls)}
        unknown = sorted(
            k
            for k in env
            if k.startswith("DAGWRIGHT_") and k not in known and not k.startswith("DAGWRIGHT_TEST_")
        )
        if unknown:
            raise DagwrightError(
                f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        values: dict[str, object] = {}
        for name, f in known.items():
            raw = env.get(name)
            if raw is None or raw == "":
                continue
            default = f.default
            if isinstance(default, tuple):
                values[f.name] = tuple(t.strip() for t in raw.split(",") if t.strip())
            elif isinstance(default, int | float):
                try:
                    value = type(default)(raw)
                except ValueError:
                    value = -1
                if value <= 0 and f.name != "model_seed":
                    kind = "integer" if isinstance(default, int) else "number"
                    raise DagwrightError(f"{name} must be a positive {kind}, got {raw!r}")
                values[f.name] = value
            else:
                values[f.name] = raw
        return cls(**values)  # type: ignore[arg-type]


__all__ = ["DEFAULT_BROKER", "DEFAULT_DB", "Settings"]
