from __future__ import annotations

from pathlib import Path

import pytest

from app.settings import Settings, SettingsError


def test_defaults():
    s = Settings.from_env({})
    assert s.models == Path("models").resolve()
    assert s.load_at_startup is True and s.api_key is None
    assert s.max_body_bytes == 64 << 20
    assert s.follow_symlinks is False


def test_values():
    s = Settings.from_env({"DEPOT_LOAD_AT_STARTUP": "false", "DEPOT_MAX_BODY_BYTES": "2M",
                           "DEPOT_STATE_DIR": "/tmp/x", "DEPOT_FOLLOW_SYMLINKS": "true"})
    assert s.load_at_startup is False and s.max_body_bytes == 2 << 20
    assert s.follow_symlinks is True
    assert s.state_dir == Path("/tmp/x")


@pytest.mark.parametrize("env, fragment", [
    ({"DEPOT_LOAD_AT_STARTUP": "maybe"}, "DEPOT_LOAD_AT_STARTUP: expected true/false"),
    ({"DEPOT_MAX_BODY_BYTES": "lots"}, "DEPOT_MAX_BODY_BYTES"),
    ({"DEPOT_MAX_BODY_BYTES": "-1"}, "positive"),
    ({"DEPOT_LOCK_TIMEOUT": "0"}, "DEPOT_LOCK_TIMEOUT: expected a positive number of seconds"),
    ({"DEPOT_FOLLOW_SYMLINKS": "maybe"}, "DEPOT_FOLLOW_SYMLINKS: expected true/false"),
])
def test_bad_values_stop_start_up(env, fragment):
    with pytest.raises(SettingsError, match=fragment):
        Settings.from_env(env)
