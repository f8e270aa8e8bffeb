"""Retry decisions as pure functions of the policy (dramatiq's compute_backoff, Temporal's policy)."""

from __future__ import annotations

import random

from dagwright.planner.schema import RetryPolicy


def backoff_delay(policy: RetryPolicy, attempt: int, seed: str) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based) before the next one.

    Jitter is drawn from a generator seeded by ``seed`` (run, step, attempt), so the same run
    waits the same way when replayed.
    """
    delay = min(policy.backoff * policy.backoff_factor ** (attempt - 1), policy.max_backoff)
    if policy.jitter:
        delay *= 1 + policy.jitter * (random.Random(seed).random() * 2 - 1)
    return max(0.0, round(delay, 6))


def should_retry(policy: RetryPolicy, attempt: int, kind: str, retryable: bool) -> bool:
    """Whether a failed attempt is tried again: attempts left, the kind allowed, and retryable."""
    return retryable and attempt < policy.max_attempts and kind in policy.retry_on


__all__ = ["backoff_delay", "should_retry"]
