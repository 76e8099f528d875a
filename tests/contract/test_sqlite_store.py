"""The ledger-store contract on SQLite, the embedded default (a file per test)."""

from __future__ import annotations

import pytest

from batteryledger.sample import demo_chain
from ledger.core import Ledger
from tests.contract.store_contract import ORIGIN, LedgerStoreContract


class TestSQLiteStore(LedgerStoreContract):
    @pytest.fixture
    def store_url(self, sqlite_url: str) -> str:
        return sqlite_url

    @pytest.fixture
    def read_only_url(self, store_url: str) -> str:
        return store_url + "?mode=ro"  # SQLite itself refuses every write on this connection


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_an_in_memory_store_can_be_initialised_and_used(url: str) -> None:
    # make_engine keeps one connection (StaticPool) for an in-memory database; `init` must hand that
    # same engine to the Ledger it returns, or the schema it created is gone before the first append
    demo = demo_chain()
    with Ledger.init(url, operator_key=demo.operator_key, origin=ORIGIN) as led:
        results = led.append([e.raw for e in demo.good_events])
        assert [r.status for r in results] == ["appended"] * len(demo.good_events)
        assert led.provenance("US-PACK-001").ancestors == 16
