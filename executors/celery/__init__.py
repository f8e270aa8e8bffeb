"""The Celery runtime: the engine over a shared trace store (``engine``: no Celery in it), and
the Celery app built from settings by a factory (``app``: tasks, run-finished wake-ups, the
sweeper). Importing this package imports neither."""
