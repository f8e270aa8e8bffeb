"""Known secret values (API keys, passwords in URLs), replaced by ``[REDACTED]`` in data.

One ``Redactor`` serves every place a secret could leave the process: trace stores opened with
secrets (``executors.store.open_store(target, secrets=...)``) redact what they record, providers
redact their errors and recorded calls (``agents.models.connect``). The values come from the
settings (``Settings.secrets()``), read once at the edge. Pure: no I/O.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable
from typing import Any

REDACTED = "[REDACTED]"
MIN_LENGTH = 8
"""Shorter values are not redacted: they are too likely to be ordinary words or numbers (and
redacting them everywhere would garble traces)."""


class Redactor:
    """Replaces each known secret value (``MIN_LENGTH`` characters or more) in every string of
    some data, recursively (dict keys too). False when it knows no secret."""

    def __init__(self, secrets: Iterable[str]) -> None:
        known = {s for s in secrets if isinstance(s, str) and len(s) >= MIN_LENGTH}
        # longest first: a secret that contains another is replaced whole
        self.secrets = tuple(sorted(known, key=lambda s: (-len(s), s)))
        self._pattern = re.compile("|".join(map(re.escape, self.secrets))) if known else None

    def __bool__(self) -> bool:
        return self._pattern is not None

    def text(self, text: str) -> str:
        if self._pattern is None:
            return text
        return self._pattern.sub(REDACTED, text)

    def value(self, value: Any) -> Any:
        """``value`` with every secret replaced; the same object when it held none."""
        if self._pattern is None:
            return value
        return _walk(value, self._pattern)


def _walk(value: Any, pattern: re.Pattern[str]) -> Any:
    if isinstance(value, str):
        return pattern.sub(REDACTED, value) if pattern.search(value) else value
    if isinstance(value, dict):
        items = [(_walk(k, pattern), _walk(v, pattern)) for k, v in value.items()]
        if all(k is k0 and v is v0 for (k, v), (k0, v0) in zip(items, value.items(), strict=True)):
            return value
        return dict(items)
    if isinstance(value, (list, tuple)):
        walked = [_walk(v, pattern) for v in value]
        if all(w is v for w, v in zip(walked, value, strict=True)):
            return value
        return tuple(walked) if isinstance(value, tuple) else walked
    return value


class _LogFilter(logging.Filter):
    """Redacts the secrets it was given from log records (message, arguments, traceback)."""

    def __init__(self) -> None:
        super().__init__()
        self.redactor = Redactor(())
        self.lock = threading.Lock()

    def add(self, secrets: Iterable[str]) -> None:
        with self.lock:
            self.redactor = Redactor((*self.redactor.secrets, *secrets))

    def filter(self, record: logging.LogRecord) -> bool:
        r = self.redactor
        if not r:
            return True
        message = record.getMessage()
        clean = r.text(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = r.text(record.exc_text)
        return True


_log_filter = _LogFilter()


def redact_logs(logger: str, secrets: Iterable[str]) -> None:
    """Redact ``secrets`` from what ``logger`` and its existing sub-loggers log (a client
    library that logs its errors, e.g. Instructor's ``logger.error(f"...{exc}")``, where the
    error may echo the request's credentials)."""
    secrets = tuple(secrets)
    if not Redactor(secrets):
        return
    _log_filter.add(secrets)
    manager = logging.Logger.manager
    loggers = [logging.getLogger(logger)] + [
        found
        for name, found in list(manager.loggerDict.items())
        if name.startswith(f"{logger}.") and isinstance(found, logging.Logger)
    ]
    for each in loggers:
        if _log_filter not in each.filters:
            each.addFilter(_log_filter)


__all__ = ["MIN_LENGTH", "REDACTED", "Redactor", "redact_logs"]
