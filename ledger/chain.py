"""The hash chain: entry_hash[n] = SHA-256(entry_hash[n-1] || leaf_hash[n]), entry_hash[-1] = GENESIS.

The leaf hash is the RFC 6962 leaf hash of the entry's canonical signed event bytes, so the chain and
the Merkle tree commit to the same leaves.
"""

from __future__ import annotations

import hashlib

GENESIS = bytes(32)  # the chain's defined start: 32 zero bytes, entry_hash "before" entry 0


def entry_hash(previous: bytes, leaf: bytes) -> bytes:
    return hashlib.sha256(previous + leaf).digest()


def leaf_of(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()
