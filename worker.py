"""The Celery worker entry point: ``celery -A dagwright.worker worker`` (or ``dagwright worker``).

The app is built here, at the edge, from the environment: DAGWRIGHT_DB (the shared trace
store), DAGWRIGHT_BROKER (default redis://127.0.0.1:6379/0), DAGWRIGHT_TOOLS (modules of user
tools), DAGWRIGHT_MODEL (the replanner's model), … (see ``dagwright.settings``).
"""

from dagwright.executors.celery.app import create_app
from dagwright.settings import Settings

app = create_app(Settings.from_env())

__all__ = ["app"]
