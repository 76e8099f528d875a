"""The ledger-store contract on PostgreSQL (a throwaway server; a fresh database per test)."""

from __future__ import annotations

import pytest

from tests.contract.store_contract import LedgerStoreContract

pytestmark = pytest.mark.integration


class TestPostgresStore(LedgerStoreContract):
    @pytest.fixture
    def store_url(self, fresh_pg_url: str) -> str:
        return fresh_pg_url

    @pytest.fixture
    def read_only_url(self, store_url: str) -> str:
        # every transaction of this session is read-only: the server itself refuses writes
        sep = "&" if "?" in store_url else "?"
        return f"{store_url}{sep}options=-c%20default_transaction_read_only%3Don"
