from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ledger.taxrules.pack import RulePack, load_pack


@pytest.fixture(scope="session")
def pack() -> RulePack:
    return load_pack()


@pytest.fixture
def user_pack(tmp_path: Path) -> Callable[[dict[str, Any]], Path]:
    """Write a user pack that extends the default one with the given sections."""

    def write(overrides: dict[str, Any]) -> Path:
        path = tmp_path / "user-pack.json"
        body = {"extends": "default", "pack_id": "user-test", "version": "0.0.1"} | overrides
        path.write_text(json.dumps(body), encoding="utf-8")
        return path

    return write


def param(value: Any, **extra: Any) -> dict[str, Any]:
    """A parameter object for a user pack."""
    return {"value": value, "citation": "test notice", "confidence": "S"} | extra
