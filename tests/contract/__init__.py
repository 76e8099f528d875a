"""The ledger-store contract: one abstract suite (store_contract.py), one tiny subclass per backend."""
