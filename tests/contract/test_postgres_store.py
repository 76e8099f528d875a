"""The ledger-store contract on PostgreSQL (a throwaway server; a fresh database per test)."""

from __future__ import annotations

import pytest

from tests.contract.store_contract import LedgerStoreContract

pytestmark = pytest.mark.integration


class TestPostgresStore(LedgerStoreContract):
    @pytest.fixture
    def store_url(self, fresh_pg_url: str) -> str:
        return fresh_pg_url
