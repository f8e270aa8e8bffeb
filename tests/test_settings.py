"""Settings: DAGWRIGHT_* variables, parsed and checked once, with errors that name the variable."""

from __future__ import annotations

from pathlib import Path

import pytest
from clitools import cli
from pydantic import ValidationError

from dagwright.errors import DagwrightError
from dagwright.settings import DEFAULT_BROKER, DEFAULT_DB, Settings


def refused(env: dict[str, str]) -> str:
    with pytest.raises(DagwrightError) as info:
        Settings.from_env(env)
    return str(info.value)


def test_defaults() -> None:
    s = Settings.from_env({})
    assert s == Settings()
    assert (s.db, s.broker, s.tools) == (DEFAULT_DB, DEFAULT_BROKER, ())
    assert (s.max_parallel, s.heartbeat, s.sweep_interval) == (None, 5.0, 5.0)
    assert (s.redispatch_after, s.visibility_timeout) == (60.0, 3600.0)
    assert (s.model, s.model_cache, s.model_base_url, s.model_api_key, s.model_seed) == (
        "", "", "", "", 0,
    )  # fmt: skip


def test_each_kind_of_value_is_parsed() -> None:
    s = Settings.from_env(
        {
            "DAGWRIGHT_DB": "postgresql://u@h/db",
            "DAGWRIGHT_TOOLS": "a, b,,c ",
            "DAGWRIGHT_MAX_PARALLEL": "3",
            "DAGWRIGHT_HEARTBEAT": "0.5",
            "DAGWRIGHT_VISIBILITY_TIMEOUT": "7200",
            "DAGWRIGHT_MODEL_SEED": "-4",
        }
    )
    assert s.db == "postgresql://u@h/db"
    assert s.tools == ("a", "b", "c")
    assert s.max_parallel == 3 and isinstance(s.max_parallel, int)
    assert s.heartbeat == 0.5
    assert s.visibility_timeout == 7200.0 and isinstance(s.visibility_timeout, float)
    assert s.model_seed == -4, "the seed may be any integer"


def test_an_empty_value_means_the_default() -> None:
    s = Settings.from_env({"DAGWRIGHT_DB": "", "DAGWRIGHT_MAX_PARALLEL": "", "DAGWRIGHT_TOOLS": ""})
    assert (s.db, s.max_parallel, s.tools) == (DEFAULT_DB, None, ())


def test_settings_are_frozen() -> None:
    s = Settings.from_env({})
    with pytest.raises(ValidationError):
        s.db = "other.db"  # type: ignore[misc]
    assert hash(s) == hash(Settings())


def test_every_field_documents_its_variable() -> None:
    for name, field in Settings.model_fields.items():
        assert field.description and field.description.startswith(f"DAGWRIGHT_{name.upper()}:")


def test_an_unknown_name_is_refused_with_a_suggestion() -> None:
    message = refused({"DAGWRIGHT_MAX_PARALEL": "3", "DAGWRIGHT_QQQ": "1"})
    assert "unknown setting(s) DAGWRIGHT_MAX_PARALEL (did you mean DAGWRIGHT_MAX_PARALLEL?)" in (
        message
    )
    assert "DAGWRIGHT_QQQ;" in message, "no suggestion when nothing is close"
    known = message.split("known: ", 1)[1].split(", ")
    assert known == sorted(known) and "DAGWRIGHT_BROKER" in known and "DAGWRIGHT_DB" in known
    assert len(known) == len(Settings.model_fields)


def test_the_test_suites_own_variables_are_not_settings() -> None:
    assert Settings.from_env({"DAGWRIGHT_TEST_PG": "postgresql://x"}) == Settings()


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("DAGWRIGHT_MODEL_SEED", "abc", "DAGWRIGHT_MODEL_SEED must be an integer, got 'abc'"),
        ("DAGWRIGHT_MAX_PARALLEL", "1.5", "DAGWRIGHT_MAX_PARALLEL must be a positive integer, got '1.5'"),
        ("DAGWRIGHT_HEARTBEAT", "fast", "DAGWRIGHT_HEARTBEAT must be a positive number, got 'fast'"),
        ("DAGWRIGHT_VISIBILITY_TIMEOUT", "inf", "DAGWRIGHT_VISIBILITY_TIMEOUT must be a positive number, got 'inf'"),
    ],
)  # fmt: skip
def test_a_bad_value_names_the_variable_and_the_type(name: str, value: str, expected: str) -> None:
    assert refused({name: value}) == expected


@pytest.mark.parametrize(
    "name",
    [
        "DAGWRIGHT_MAX_PARALLEL",
        "DAGWRIGHT_HEARTBEAT",
        "DAGWRIGHT_SWEEP_INTERVAL",
        "DAGWRIGHT_REDISPATCH_AFTER",
        "DAGWRIGHT_VISIBILITY_TIMEOUT",
    ],
)
@pytest.mark.parametrize("value", ["0", "-1"])
def test_counts_and_durations_must_be_positive(name: str, value: str) -> None:
    assert f"{name} must be a positive" in refused({name: value})


def test_every_bad_value_is_reported_at_once() -> None:
    message = refused({"DAGWRIGHT_MAX_PARALLEL": "0", "DAGWRIGHT_MODEL_SEED": "x"})
    assert "DAGWRIGHT_MAX_PARALLEL" in message and "DAGWRIGHT_MODEL_SEED" in message


def test_an_explicit_mapping_ignores_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DAGWRIGHT_DB", "from-environ.db")
    monkeypatch.setenv("DAGWRIGHT_NOT_A_SETTING", "x")
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("DAGWRIGHT_DB=from-dotenv.db\n")
    assert Settings.from_env({"DAGWRIGHT_MAX_PARALLEL": "2"}).db == DEFAULT_DB
    assert Settings().db == DEFAULT_DB, "constructing Settings reads nothing"
    monkeypatch.delenv("DAGWRIGHT_NOT_A_SETTING")
    assert Settings.from_env().db == "from-environ.db", "without a mapping: os.environ"


def test_the_cli_refuses_a_bad_setting(tmp_path: Path) -> None:
    proc = cli("runs", cwd=tmp_path, env={"DAGWRIGHT_MODEL_SEED": "abc"})
    assert proc.returncode == 2
    assert "DAGWRIGHT_MODEL_SEED must be an integer, got 'abc'" in " ".join(proc.stderr.split())
    assert "Traceback" not in proc.stderr and "ValidationError" not in proc.stderr
