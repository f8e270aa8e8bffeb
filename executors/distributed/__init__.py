"""The engine over a shared trace store (``engine``): any number of workers — Celery processes,
or the API server's threads (``executors.inprocess``) — advance the same runs concurrently;
claims make each dispatch and each outcome happen once. ``recovery``: heartbeats and the sweep;
``control``: cancelling, refusing and revising a run. No Celery in here."""
