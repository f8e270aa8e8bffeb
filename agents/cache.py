"""The model-call cache: identical requests (same model, messages, schema and parameters) are
answered from the cache — Redis when configured, the trace store otherwise — and the trace marks
them as cache hits."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def request_key(
    model: str, messages: list[dict[str, Any]], schema: Any, params: dict[str, Any]
) -> str:
    canonical = json.dumps(
        {"model": model, "messages": messages, "schema": schema, "params": params},
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


class StoreCache:
    """The trace store's cache table (SQLite or PostgreSQL): shared by everyone using the store."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def get(self, key: str) -> Any:
        return self.store.cache_get(key)

    def put(self, key: str, value: Any) -> None:
        self.store.cache_put(key, value)


class RedisCache:
    """Redis as the cache (DAGWRIGHT_MODEL_CACHE=redis://…); entries never expire by default."""

    def __init__(
        self, url: str, *, prefix: str = "dagwright:model-cache:", ttl: int | None = None
    ) -> None:
        import redis

        self.client = redis.Redis.from_url(url)
        self.prefix = prefix
        self.ttl = ttl

    def get(self, key: str) -> Any:
        raw = self.client.get(self.prefix + key)
        return json.loads(raw) if raw is not None else None

    def put(self, key: str, value: Any) -> None:
        self.client.set(self.prefix + key, json.dumps(value), nx=True, ex=self.ttl)


__all__ = ["RedisCache", "StoreCache", "request_key"]
