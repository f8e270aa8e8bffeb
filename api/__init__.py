"""The queue API: submit, follow and manage runs over HTTP (``dagwright serve``)."""

from __future__ import annotations

from dagwright.api.app import create_app

__all__ = ["create_app"]
