"""The engine over a shared trace store (``engine``): any number of workers — Celery processes,
or the API server's threads (``executors.inprocess``) — advance the same runs concurrently;
claims make each dispatch and each outcome happen once. Its parts: ``starting`` (a new run and
its first dispatches), ``attempts`` (a worker's job for one message), ``outcomes`` (recording an
attempt's outcome, its retry or its dependents' dispatch), ``caches`` (compiled plans and folded
states), ``dispatch`` (``Dispatch``, ``Timing``), ``recovery`` (heartbeats and the sweep),
``control`` (cancelling, refusing and revising a run). No Celery in here."""
