"""Merkle tree throughput: append, proof generation and proof verification on an in-memory node store.

Absolute numbers depend on the machine, so alongside each rate we print it in units of the raw
SHA-256 rate measured in the same run (how many node hashes one operation costs, in effect).

    python -m bench.bench_merkle [--n LEAVES] [--quick]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import time
from collections.abc import Callable

from ledger.merkle import leaf_hash, verify_consistency, verify_inclusion
from ledger.tree import (
    MemoryNodes,
    consistency_proof_from_nodes,
    inclusion_proof_from_nodes,
    nodes_for_append,
    root_from_nodes,
)

BATCH = 1000
SAMPLES = 20_000


def _rate(count: int, fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return count / (time.perf_counter() - start)


def run(n: int = 1_000_000) -> dict[str, float]:
    """Build a tree of n leaves in batches of BATCH, then time proofs and verification on it."""
    rng = random.Random(6962)
    data = [b"\x01" + i.to_bytes(8, "big") for i in range(n)]

    # Baseline: raw SHA-256 of a 65-byte node input, the unit every other figure is compared to.
    block = b"\x01" + bytes(64)
    sha_n = 200_000

    def sha() -> None:
        for _ in range(sha_n):
            hashlib.sha256(block).digest()

    sha_rate = _rate(sha_n, sha)

    store = MemoryNodes()
    leaves: list[bytes] = []

    def build() -> None:
        for start in range(0, n, BATCH):
            batch = [leaf_hash(d) for d in data[start : start + BATCH]]
            store.put(nodes_for_append(start, batch, store.get))
            leaves.extend(batch)

    append_rate = _rate(n, build)
    root = root_from_nodes(n, store.get)

    samples = min(SAMPLES, n)
    indices = [rng.randrange(n) for _ in range(samples)]
    old_sizes = [rng.randrange(1, n + 1) for _ in range(samples)]
    old_roots = {m: root_from_nodes(m, store.get) for m in old_sizes}
    inclusion: list[list[bytes]] = []
    consistency: list[list[bytes]] = []

    def make_inclusion() -> None:
        inclusion.extend(inclusion_proof_from_nodes(i, n, store.get) for i in indices)

    def make_consistency() -> None:
        consistency.extend(consistency_proof_from_nodes(m, n, store.get) for m in old_sizes)

    def check_inclusion() -> None:
        for i, proof in zip(indices, inclusion, strict=True):
            verify_inclusion(leaves[i], i, n, proof, root)

    def check_consistency() -> None:
        for m, proof in zip(old_sizes, consistency, strict=True):
            verify_consistency(m, n, old_roots[m], root, proof)

    return {
        "n": float(n),
        "nodes_stored": float(len(store)),
        "sha256_per_s": sha_rate,
        "append_leaves_per_s": append_rate,
        "inclusion_proofs_per_s": _rate(samples, make_inclusion),
        "consistency_proofs_per_s": _rate(samples, make_consistency),
        "verify_inclusion_per_s": _rate(samples, check_inclusion),
        "verify_consistency_per_s": _rate(samples, check_consistency),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="leaves in the tree (default 1,000,000)")
    parser.add_argument("--quick", action="store_true", help="a tree of 50,000 leaves (smoke run)")
    args = parser.parse_args()
    figures = run(50_000 if args.quick else args.n)
    sha = figures["sha256_per_s"]
    print(f"tree of {int(figures['n']):,} leaves, {int(figures['nodes_stored']):,} stored nodes")
    for key, value in figures.items():
        if key.endswith("_per_s"):
            print(f"  {key:<26} {value:>14,.0f} /s   1 op = {sha / value:8.1f} SHA-256 of one node")
    print(json.dumps({k: round(v, 1) for k, v in figures.items()}, sort_keys=True))


if __name__ == "__main__":
    main()
