"""The ledger-store contract on SQLite, the embedded default (a file per test)."""

from __future__ import annotations

import pytest

from tests.contract.store_contract import LedgerStoreContract


class TestSQLiteStore(LedgerStoreContract):
    @pytest.fixture
    def store_url(self, sqlite_url: str) -> str:
        return sqlite_url
