"""The Celery worker entry point: ``celery -A worker worker`` (or ``dagwright worker``).

Settings come from the environment: DAGWRIGHT_DB (the shared trace store), DAGWRIGHT_BROKER
(default redis://127.0.0.1:6379/0), DAGWRIGHT_TOOLS (modules of user tools).
"""

from dagwright.executors.celery_app import app

__all__ = ["app"]
