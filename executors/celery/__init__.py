"""The Celery runtime: the Celery app built from settings by a factory (``app``: tasks, run-finished
wake-ups, the sweeper) and the ``dagwright.submit`` task (``submit``), around the engine of
``executors.distributed`` (no Celery in it). Importing this package imports neither."""
