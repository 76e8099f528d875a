"""Fixtures for the wire-contract and append-rule unit tests: real keys, real signed bytes, real ledgers.

Names are prefixed ``bl_`` so they never shadow the store-URL fixtures of tests/conftest.py.

* ``bl_demo`` (session): the signed demo supply chain of batteryledger.sample (keys made once).
* ``bl_key``: a fresh Ed25519 private key.
* ``bl_kit``: a :class:`tests.unit.ledger_kit.LedgerKit`, a real SQLite ledger file in ``tmp_path`` plus helpers that build,
  sign and append events the way a plant and the registry authority would.
* ``bl_assets`` / ``bl_manifest``: the named valid and broken event artefacts of tests/assets/events.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from batteryledger.sample import DemoChain, demo_chain
from ledger.core import Ledger
from schemas.signing import generate_key
from tests.unit.ledger_kit import LedgerKit

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "events"


@pytest.fixture(scope="session")
def bl_demo() -> DemoChain:
    return demo_chain()


@pytest.fixture
def bl_key() -> Ed25519PrivateKey:
    return generate_key()


@pytest.fixture
def bl_kit(tmp_path: Path) -> Iterator[LedgerKit]:
    op = generate_key()
    url = f"sqlite:///{tmp_path / 'rules-ledger.db'}"
    led = Ledger.init(url, operator_key=op, origin="test.batteryledger.org/unit")
    kit = LedgerKit(url, op, led)
    try:
        yield kit
    finally:
        kit.led.close()


@pytest.fixture(scope="session")
def bl_assets() -> Path:
    assert ASSETS.is_dir(), f"missing test assets at {ASSETS}"
    return ASSETS


@pytest.fixture(scope="session")
def bl_manifest(bl_assets: Path) -> dict[str, dict[str, Any]]:
    manifest: dict[str, dict[str, Any]] = json.loads((bl_assets / "manifest.json").read_text())
    return manifest
