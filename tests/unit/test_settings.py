"""Every worker setting is documented where an operator looks: the README's table and streams/settings.py."""

from __future__ import annotations

from pathlib import Path

import pytest

import streams.settings
from streams.settings import ENV, Settings, SettingsError

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.mark.parametrize("name", sorted(ENV))
def test_every_setting_is_in_the_readme_and_the_module_table(name: str) -> None:
    var = ENV[name]
    assert f"`{var}`" in README.read_text(), f"{var} is missing from the README's worker settings"
    doc = streams.settings.__doc__ or ""
    assert f"| {name} | {var} |" in doc, f"{name} is missing from the table in streams/settings.py"


@pytest.mark.parametrize(("raw", "value"), [("1", True), ("yes", True), ("0", False), ("off", False)])
def test_booleans_read_from_the_environment(raw: str, value: bool) -> None:
    settings = Settings.from_env({"BATTERYLEDGER_DEDICATED_SEQUENCER": raw})
    assert settings.dedicated_sequencer is value
    assert Settings.from_env(settings.to_env()).dedicated_sequencer is value


def test_an_unreadable_boolean_is_refused_in_one_line() -> None:
    with pytest.raises(SettingsError, match="BATTERYLEDGER_DEDICATED_SEQUENCER='maybe' is not a valid bool"):
        Settings.from_env({"BATTERYLEDGER_DEDICATED_SEQUENCER": "maybe"})


def test_fetch_settings_are_checked() -> None:
    with pytest.raises(SettingsError, match="fetch_min_bytes"):
        Settings(fetch_min_bytes=0)
    with pytest.raises(SettingsError, match="fetch_wait_s"):
        Settings(fetch_wait_s=0)
