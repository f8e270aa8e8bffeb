"""Secrets that steps read as ``${{ secrets.NAME }}``: where they come from, and the read-only
mapping the executors hold.

- ``Settings.from_env`` reads them once, at the edge: every ``DAGWRIGHT_SECRET_<NAME>``
  variable, and the file ``DAGWRIGHT_SECRETS_FILE`` names (``read_secrets``). A variable wins
  over the file.
- The file is dotenv-style: one ``NAME=value`` per line; blank lines and lines starting with
  ``#`` are skipped; ``export NAME=value`` is accepted; one pair of matching quotes around the
  whole value is removed. Nothing else is interpreted: no inline comments, no escapes, no
  ``${VAR}`` expansion, no multi-line values.
- Names are case-insensitive and kept upper-case: ``secrets.api_token`` reads ``API_TOKEN``.
- A value shorter than ``redact.MIN_LENGTH`` (8) characters is refused: redacting one that
  short would garble traces, and not redacting it would leave it in them.
- Each value is redacted as it is and URL-encoded (``redaction_forms``): a secret sent as a
  query parameter appears encoded in the request's URL.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from urllib.parse import quote, quote_plus

from dagwright.errors import DagwrightError
from dagwright.redact import MIN_LENGTH, REDACTED, Redactor

SECRET_PREFIX = "DAGWRIGHT_SECRET_"
"""``DAGWRIGHT_SECRET_API_TOKEN=…`` is the secret ``API_TOKEN``."""
SECRET_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_FILE_BYTES = 1 << 20


class SecretValues(Mapping[str, str]):
    """Secret name (upper-case; looked up case-insensitively) → value. Read-only; its repr
    and str show the names, never the values."""

    __slots__ = ("_values", "_redactor", "_stand_ins")

    def __init__(self, values: Mapping[str, str] | None = None) -> None:
        self._values = {name.upper(): value for name, value in (values or {}).items()}
        self._redactor: Redactor | None = None
        self._stand_ins: frozenset[str] = frozenset()

    def with_stand_ins(self, names: Iterable[str]) -> SecretValues:
        """These secrets, and ``[REDACTED]`` for each of ``names`` not set (for a replay: a
        step whose tool is served reads a secret as its recording holds it). A stand-in is
        not a value: nothing is redacted for it."""
        missing = {name.upper() for name in names} - set(self._values)
        if not missing:
            return self
        values = SecretValues({**self._values, **dict.fromkeys(missing, REDACTED)})
        values._stand_ins = frozenset(missing)
        return values

    def __getitem__(self, name: str) -> str:
        if not isinstance(name, str):
            raise KeyError(name)
        return self._values[name.upper()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.upper() in self._values

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"SecretValues(names={sorted(self._values)})"

    __str__ = __repr__

    def redaction_forms(self) -> tuple[str, ...]:
        """Every value, as it is and URL-encoded: what must never be recorded or printed."""
        return redaction_forms(v for k, v in self._values.items() if k not in self._stand_ins)

    def redactor(self) -> Redactor:
        """Replaces every ``redaction_forms`` value by ``[REDACTED]`` (made once)."""
        if self._redactor is None:
            self._redactor = Redactor(self.redaction_forms())
        return self._redactor


NO_SECRETS = SecretValues()


def redaction_forms(values: Iterable[str]) -> tuple[str, ...]:
    """Each value, and its URL-encoded forms (``quote`` and the ``+`` form httpx writes in a
    query string) where they differ."""
    forms: dict[str, None] = {}
    for value in values:
        forms.update(dict.fromkeys((value, quote(value, safe=""), quote_plus(value))))
    return tuple(forms)


def read_secrets(env: Mapping[str, str], file: str = "") -> SecretValues:
    """The secrets of ``file`` (a dotenv-style file; empty: none) and of the
    ``DAGWRIGHT_SECRET_*`` variables of ``env``, which win. Raises DagwrightError naming the
    variable, or the file and line, of a name that is not one or a value too short to redact."""
    found: dict[str, tuple[str, str]] = {}  # name -> (value, where it was set)
    if file:
        found.update(_read_file(Path(file)))
    for key, value in env.items():
        if not key.startswith(SECRET_PREFIX) or not value:  # empty: not set
            continue
        name = key.removeprefix(SECRET_PREFIX)
        if not SECRET_NAME.match(name):
            raise DagwrightError(
                f"{key}: {name!r} is not a secret name (letters, digits and '_', not starting "
                "with a digit)"
            )
        found[name.upper()] = (value, key)
    for name, (value, where) in found.items():
        if len(value) < MIN_LENGTH:
            raise DagwrightError(
                f"secret {name} ({where}) is shorter than {MIN_LENGTH} characters: too short to "
                "be redacted from traces reliably; use a longer value"
            )
    return SecretValues({name: value for name, (value, _) in found.items()})


def _read_file(path: Path) -> dict[str, tuple[str, str]]:
    what = f"DAGWRIGHT_SECRETS_FILE {path}"
    try:
        with path.open("rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise DagwrightError(f"{what}: cannot read it: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE_BYTES:
        raise DagwrightError(f"{what}: larger than {MAX_FILE_BYTES:,} bytes")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DagwrightError(f"{what}: not UTF-8 text") from None
    found: dict[str, tuple[str, str]] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path}:{number}"
        name, sep, value = line.removeprefix("export ").partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not SECRET_NAME.match(name):
            raise DagwrightError(
                f"{where}: write NAME=value (NAME: letters, digits and '_', not starting with a "
                "digit)"
            )
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        if name.upper() in found:
            raise DagwrightError(f"{where}: secret {name.upper()} is set twice in the file")
        if value:  # empty: not set
            found[name.upper()] = (value, where)
    return found


__all__ = [
    "NO_SECRETS",
    "SECRET_NAME",
    "SECRET_PREFIX",
    "SecretValues",
    "read_secrets",
    "redaction_forms",
]
