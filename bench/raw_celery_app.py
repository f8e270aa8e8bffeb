"""Raw Celery, the baseline for ``celery_bench.py``: the same broker and worker settings as
``dagwright.executors.celery.app``, and nothing else (no trace, no store, no engine).

Two tasks:

- ``rawbench.chain_step(key, i, n)``: does nothing, then sends step ``i + 1`` with
  ``apply_async`` (the next task is sent when the previous one finishes its body); the last step
  pushes to the Redis list ``<key>:fin``, which the client BLPOPs on.
- ``rawbench.dag_step(key, sid)``: a step of a DAG, driven dependency-first. The client stores
  the DAG (durations, dependents) under ``<key>:spec`` and a counter ``<key>:pending:<sid>`` per
  step (its number of dependencies). A step sleeps its duration, then decrements the counter of
  each dependent and sends those that reach zero; the step that completes the run pushes to
  ``<key>:fin``.

Workers: ``RAWBENCH_BROKER=redis://... celery -A raw_celery_app worker`` with ``bench/`` on
``PYTHONPATH`` (``celery_bench.py`` starts and stops them itself).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import redis
from celery import Celery

BROKER = os.environ.get("RAWBENCH_BROKER", "redis://127.0.0.1:6379/12")

app = Celery("rawbench", broker=BROKER)
# The same settings as dagwright's Celery app (create_app in executors/celery/app.py).
app.conf.update(
    task_ignore_result=True,
    result_backend=None,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    broker_transport_options={
        "visibility_timeout": 3600.0,
        "unacked_restore_interval": 1,
        "unacked_restore_throttle": 1,
    },
    task_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
)

_clients: dict[int, redis.Redis] = {}
_specs: dict[str, dict[str, Any]] = {}


def r() -> redis.Redis:
    """This process's Redis client (one per process: connections don't survive a fork)."""
    pid = os.getpid()
    if pid not in _clients:
        _clients.clear()
        _clients[pid] = redis.Redis.from_url(BROKER)
    return _clients[pid]


@app.task(name="rawbench.chain_step")
def chain_step(key: str, i: int, n: int) -> None:
    if i + 1 < n:
        chain_step.apply_async((key, i + 1, n))
    else:
        r().rpush(f"{key}:fin", time.time())


def _spec(key: str) -> dict[str, Any]:
    spec = _specs.get(key)
    if spec is None:
        spec = json.loads(r().get(f"{key}:spec"))
        if len(_specs) > 64:
            _specs.clear()
        _specs[key] = spec
    return spec


@app.task(name="rawbench.dag_step")
def dag_step(key: str, sid: str) -> None:
    spec = _spec(key)
    ms = spec["durations"][sid]
    if ms:
        time.sleep(ms / 1000)
    client = r()
    for child in spec["dependents"][sid]:
        if client.decr(f"{key}:pending:{child}") == 0:
            dag_step.apply_async((key, child))
    if client.incr(f"{key}:done") == spec["n"]:
        client.rpush(f"{key}:fin", time.time())
