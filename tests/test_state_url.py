"""DEPOT_STATE_URL picks the store: SQLite in a folder, or PostgreSQL."""
from __future__ import annotations

from pathlib import Path

import pytest

from app.settings import Settings, SettingsError
from app.store import open_store
from app.store.postgres import PostgresStore
from app.store.sqlite import SQLiteStore


@pytest.mark.parametrize("env, store, state_dir", [
    ({}, SQLiteStore, None),
    ({"DEPOT_STATE_URL": "", "DEPOT_STATE_DIR": "/tmp/x"}, SQLiteStore, "/tmp/x"),
    ({"DEPOT_STATE_URL": "sqlite:///tmp/depot-state"}, SQLiteStore, "/tmp/depot-state"),
    ({"DEPOT_STATE_URL": "sqlite:////tmp/depot-state", "DEPOT_STATE_DIR": "/tmp/x"},
     SQLiteStore, "/tmp/depot-state"),
    ({"DEPOT_STATE_URL": "postgresql://depot:pw@db:5432/depot", "DEPOT_STATE_DIR": "/tmp/x"},
     PostgresStore, "/tmp/x"),
    ({"DEPOT_STATE_URL": "postgres://db/depot"}, PostgresStore, None),
], ids=["unset", "empty", "sqlite-url", "sqlite-four-slashes", "postgresql", "postgres"])
def test_the_state_url_picks_the_store(env, store, state_dir):
    settings = Settings.from_env(env)
    assert isinstance(open_store(settings), store)  # opening connects to nothing yet
    if state_dir is not None:
        assert settings.state_dir == Path(state_dir)


@pytest.mark.parametrize("url, fragment", [
    ("mysql://u:s3cret@db/depot", "DEPOT_STATE_URL: expected sqlite:///<path> or postgresql://"),
    ("u:s3cret@db/depot", "got no URL"),
    ("sqlite://", "DEPOT_STATE_URL"),
    ("sqlite:///", "DEPOT_STATE_URL"),
], ids=["mysql", "no-scheme", "sqlite-no-path", "sqlite-root"])
def test_a_bad_state_url_stops_start_up_without_showing_its_password(url, fragment):
    with pytest.raises(SettingsError, match=fragment) as e:
        Settings.from_env({"DEPOT_STATE_URL": url})
    assert "s3cret" not in str(e.value)


def test_a_state_url_libpq_cannot_read_is_a_settings_error_without_its_password(tmp_path):
    settings = Settings.from_env({"DEPOT_STATE_URL": "postgresql://u:s3cret@db/depot?nosuch=1",
                                  "DEPOT_STATE_DIR": str(tmp_path)})
    with pytest.raises(SettingsError, match="DEPOT_STATE_URL: .*nosuch") as e:
        open_store(settings)
    assert "s3cret" not in str(e.value)
    assert "s3cret" not in repr(settings)


@pytest.mark.parametrize("raw, seconds", [(None, 10.0), ("2.5", 2.5)])
def test_lease_seconds(raw, seconds):
    env = {} if raw is None else {"DEPOT_LEASE_SECONDS": raw}
    assert Settings.from_env(env).lease_seconds == seconds


@pytest.mark.parametrize("raw", ["1", "0", "soon"])
def test_a_lease_shorter_than_two_seconds_is_refused(raw):
    with pytest.raises(SettingsError, match="DEPOT_LEASE_SECONDS: expected seconds, at least 2"):
        Settings.from_env({"DEPOT_LEASE_SECONDS": raw})
