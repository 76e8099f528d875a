"""RFC 6962 / 9162 hashing and proofs: known answers, the transparency-dev probes, and properties
against a naive recursive reference written straight from the RFC text."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.merkle import (
    EMPTY_ROOT,
    ProofError,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root_hash,
    verify_consistency,
    verify_inclusion,
)

PROBES = Path(__file__).resolve().parents[1] / "assets" / "rfc6962"
# README.md beside the probes: this one expects acceptance of 12-byte "roots"; our 32-byte policy rejects it.
STRICTER = "consistency/additional/sizes-are-equal-one-and-proof-is-empty.json"


# --- naive reference, transcribed from RFC 9162 section 2.1 ----------------------------------------


def ref_mth(d: Sequence[bytes]) -> bytes:
    n = len(d)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return d[0]
    k = 1
    while k * 2 < n:
        k *= 2
    return hashlib.sha256(b"\x01" + ref_mth(d[:k]) + ref_mth(d[k:])).digest()


def ref_path(m: int, d: Sequence[bytes]) -> list[bytes]:
    n = len(d)
    if n == 1:
        return []
    k = 1
    while k * 2 < n:
        k *= 2
    if m < k:
        return [*ref_path(m, d[:k]), ref_mth(d[k:])]
    return [*ref_path(m - k, d[k:]), ref_mth(d[:k])]


def ref_subproof(m: int, d: Sequence[bytes], b: bool) -> list[bytes]:
    n = len(d)
    if m == n:
        return [] if b else [ref_mth(d)]
    k = 1
    while k * 2 < n:
        k *= 2
    if m <= k:
        return [*ref_subproof(m, d[:k], b), ref_mth(d[k:])]
    return [*ref_subproof(m - k, d[k:], False), ref_mth(d[:k])]


def distinct_leaves(salt: bytes, n: int) -> list[bytes]:
    """Distinct leaves, so no mutated proof can verify by a coincidence of equal subtrees."""
    return [leaf_hash(salt + i.to_bytes(4, "big")) for i in range(n)]


def flip(h: bytes, bit: int = 0) -> bytes:
    return bytes([h[0] ^ (1 << bit)]) + h[1:]


# --- known answers ---------------------------------------------------------------------------------

# RFC 6962 reference tree of Certificate Transparency: leaf inputs and root hashes for sizes 0..8, from
# transparency-dev/merkle testonly/constants.go (LeafInputs, RootHashes), the same vectors as
# google/certificate-transparency's merkle_tree_test.
CT_LEAVES = [
    bytes.fromhex(x)
    for x in [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ]
]
CT_ROOTS = [
    bytes.fromhex(x)
    for x in [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ]
]


@pytest.mark.parametrize("size", range(9))
def test_ct_reference_tree_roots(size: int) -> None:
    leaves = [leaf_hash(x) for x in CT_LEAVES[:size]]
    assert root_hash(leaves) == CT_ROOTS[size]
    assert ref_mth(leaves) == CT_ROOTS[size]


def test_empty_root_is_sha256_of_nothing() -> None:
    assert bytes.fromhex("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855") == EMPTY_ROOT
    assert root_hash([]) == EMPTY_ROOT


def test_leaf_and_node_hashes_are_domain_separated() -> None:
    a, b = leaf_hash(b"a"), leaf_hash(b"b")
    assert a == hashlib.sha256(b"\x00a").digest()
    assert node_hash(a, b) == hashlib.sha256(b"\x01" + a + b).digest()
    # A node's 64 input bytes hashed as a leaf must not give the node hash (second preimage defence).
    assert leaf_hash(a + b) != node_hash(a, b)


@pytest.mark.parametrize("bad", [31, 33, 0])
def test_node_hash_refuses_non_hash_children(bad: int) -> None:
    with pytest.raises(ValueError, match="32-byte"):
        node_hash(b"\x00" * bad, leaf_hash(b""))
    with pytest.raises(ValueError, match="32-byte"):
        node_hash(leaf_hash(b""), b"\x00" * bad)


# --- transparency-dev probes -----------------------------------------------------------------------


def _probe_files() -> list[Path]:
    return sorted(PROBES.rglob("*.json"))


def test_all_probes_present() -> None:
    # README.md: 196 probes. Guards against a partial copy silently shrinking the parametrized set.
    assert len(_probe_files()) == 196
    assert (PROBES / "LICENSE").is_file()
    assert (PROBES / STRICTER).is_file()


def _run_probe(probe: dict[str, Any]) -> None:
    def b64(s: str) -> bytes:
        return base64.b64decode(s)

    proof = [b64(p) for p in probe["proof"] or []]
    if "leafIdx" in probe:
        verify_inclusion(
            b64(probe["leafHash"]), probe["leafIdx"], probe["treeSize"], proof, b64(probe["root"])
        )
    else:
        verify_consistency(probe["size1"], probe["size2"], b64(probe["root1"]), b64(probe["root2"]), proof)


@pytest.mark.parametrize("path", _probe_files(), ids=lambda p: str(p.relative_to(PROBES)))
def test_probe(path: Path) -> None:
    probe = json.loads(path.read_text())
    rel = str(path.relative_to(PROBES))
    want_error = probe["wantErr"] or rel == STRICTER
    if want_error:
        with pytest.raises(ProofError):
            _run_probe(probe)
    else:
        _run_probe(probe)


# --- strict input policy ---------------------------------------------------------------------------

L = distinct_leaves(b"strict", 8)
R8 = root_hash(L)
R5 = root_hash(L[:5])


@pytest.mark.parametrize("size", [31, 33])
def test_inclusion_rejects_wrong_hash_lengths(size: int) -> None:
    proof = inclusion_proof(L, 3)
    verify_inclusion(L[3], 3, 8, proof, R8)
    with pytest.raises(ProofError, match="leaf hash is"):
        verify_inclusion((L[3] + b"\x00")[:size], 3, 8, proof, R8)
    with pytest.raises(ProofError, match="root is"):
        verify_inclusion(L[3], 3, 8, proof, (R8 + b"\x00")[:size])
    with pytest.raises(ProofError, match="proof element 1 is"):
        verify_inclusion(L[3], 3, 8, [proof[0], (proof[1] + b"\x00")[:size], proof[2]], R8)


@pytest.mark.parametrize("size", [31, 33])
def test_consistency_rejects_wrong_hash_lengths(size: int) -> None:
    proof = consistency_proof(L, 5)
    verify_consistency(5, 8, R5, R8, proof)
    with pytest.raises(ProofError, match="old root is"):
        verify_consistency(5, 8, (R5 + b"\x00")[:size], R8, proof)
    with pytest.raises(ProofError, match="new root is"):
        verify_consistency(5, 8, R5, (R8 + b"\x00")[:size], proof)
    with pytest.raises(ProofError, match="proof element 0 is"):
        verify_consistency(5, 8, R5, R8, [(proof[0] + b"\x00")[:size], *proof[1:]])
    # Equal sizes compare roots directly; the length policy still applies (the probe README's case).
    with pytest.raises(ProofError, match="old root is"):
        verify_consistency(8, 8, (R8 + b"\x00")[:size], (R8 + b"\x00")[:size], [])


def test_inclusion_index_and_size_policy() -> None:
    with pytest.raises(ProofError, match="not in a tree of size 8"):
        verify_inclusion(L[0], 8, 8, inclusion_proof(L, 7), R8)
    with pytest.raises(ProofError, match="not in a tree of size 0"):
        verify_inclusion(L[0], 0, 0, [], EMPTY_ROOT)
    with pytest.raises(ProofError, match=">= 0"):
        verify_inclusion(L[0], -1, 8, inclusion_proof(L, 0), R8)
    with pytest.raises(ProofError, match="must be an int"):
        verify_inclusion(L[0], 0, True, [], L[0])
    with pytest.raises(ProofError, match="not in a tree of size 8"):
        inclusion_proof(L, 8)


def test_inclusion_proof_length_is_named() -> None:
    proof = inclusion_proof(L, 2)
    with pytest.raises(ProofError, match="has 2 hashes, want 3"):
        verify_inclusion(L[2], 2, 8, proof[:2], R8)
    with pytest.raises(ProofError, match="has 4 hashes, want 3"):
        verify_inclusion(L[2], 2, 8, [*proof, R8], R8)


def test_consistency_size_policy() -> None:
    with pytest.raises(ProofError, match="from size 0"):
        verify_consistency(0, 0, EMPTY_ROOT, EMPTY_ROOT, [])
    with pytest.raises(ProofError, match="from size 0"):
        verify_consistency(0, 8, EMPTY_ROOT, R8, [])
    with pytest.raises(ProofError, match="larger than new_size"):
        verify_consistency(8, 5, R8, R5, [])
    with pytest.raises(ProofError, match="must be empty"):
        verify_consistency(8, 8, R8, R8, [R8])
    with pytest.raises(ProofError, match="roots differ"):
        verify_consistency(8, 8, R8, R5, [])
    with pytest.raises(ProofError, match="has 3 hashes, want 4"):
        verify_consistency(5, 8, R5, R8, consistency_proof(L, 5)[:3])
    with pytest.raises(ProofError, match="from size 0"):
        consistency_proof(L, 0)
    with pytest.raises(ProofError, match="larger than the tree size"):
        consistency_proof(L, 9)
    verify_consistency(8, 8, R8, R8, [])
    assert consistency_proof(L, 8) == []


def test_wrong_root_message_names_both_roots() -> None:
    with pytest.raises(ProofError, match=f"not the given root {R5.hex()}"):
        verify_inclusion(L[1], 1, 8, inclusion_proof(L, 1), R5)


def test_accepts_bytes_like_inputs() -> None:
    # Typed as bytes, but a driver handing back memoryview/bytearray columns must not be refused.
    proof: list[Any] = [bytearray(p) for p in inclusion_proof(L, 6)]
    leaf: Any = memoryview(L[6])
    root: Any = bytearray(R8)
    verify_inclusion(leaf, 6, 8, proof, root)


def test_rejects_non_bytes_hash() -> None:
    with pytest.raises(ProofError, match="must be bytes"):
        verify_inclusion(L[0].hex(), 0, 8, inclusion_proof(L, 0), R8)  # type: ignore[arg-type]


# --- exhaustive agreement with the reference on small trees ----------------------------------------

SMALL = distinct_leaves(b"small", 64)


@pytest.mark.parametrize("n", range(1, 65))
def test_small_trees_match_reference_exhaustively(n: int) -> None:
    d = SMALL[:n]
    root = root_hash(d)
    assert root == ref_mth(d)
    for m in range(n):
        proof = inclusion_proof(d, m)
        assert proof == ref_path(m, d)
        verify_inclusion(d[m], m, n, proof, root)
    for m in range(1, n + 1):
        proof = consistency_proof(d, m)
        assert proof == ref_subproof(m, d, True)
        verify_consistency(m, n, root_hash(d[:m]), root, proof)


# --- properties, sizes 1..256 ----------------------------------------------------------------------


@st.composite
def inclusion_cases(draw: st.DrawFn) -> tuple[list[bytes], int]:
    n = draw(st.integers(1, 256))
    return distinct_leaves(draw(st.binary(max_size=8)), n), draw(st.integers(0, n - 1))


@st.composite
def consistency_cases(draw: st.DrawFn) -> tuple[list[bytes], int]:
    n = draw(st.integers(1, 256))
    return distinct_leaves(draw(st.binary(max_size=8)), n), draw(st.integers(1, n))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.binary(max_size=16), min_size=1, max_size=256))
def test_root_matches_reference(data: list[bytes]) -> None:
    leaves = [leaf_hash(x) for x in data]
    assert root_hash(leaves) == ref_mth(leaves)


@settings(max_examples=150, deadline=None)
@given(inclusion_cases())
def test_inclusion_proofs_match_reference_and_verify(case: tuple[list[bytes], int]) -> None:
    d, m = case
    proof = inclusion_proof(d, m)
    assert proof == ref_path(m, d)
    verify_inclusion(d[m], m, len(d), proof, ref_mth(d))


@settings(max_examples=150, deadline=None)
@given(consistency_cases())
def test_consistency_proofs_match_reference_and_verify(case: tuple[list[bytes], int]) -> None:
    d, m = case
    proof = consistency_proof(d, m)
    assert proof == ref_subproof(m, d, True)
    verify_consistency(m, len(d), ref_mth(d[:m]), ref_mth(d), proof)


InclusionArgs = tuple[bytes, int, int, list[bytes], bytes]
ConsistencyArgs = tuple[int, int, bytes, bytes, list[bytes]]

# Each mutation maps valid (leaf, index, size, proof, root) to arguments that must be rejected, or to
# None where it does not apply (nothing to drop from an empty proof).
INCLUSION_MUTATIONS: dict[str, Callable[[InclusionArgs, list[bytes]], InclusionArgs | None]] = {
    "index+1": lambda a, d: (a[0], a[1] + 1, a[2], a[3], a[4]),
    "index-1": lambda a, d: (a[0], a[1] - 1, a[2], a[3], a[4]) if a[1] > 0 else None,
    "size*2": lambda a, d: (a[0], a[1], a[2] * 2, a[3], a[4]),
    "size//2": lambda a, d: (a[0], a[1], a[2] // 2, a[3], a[4]),
    "wrong-leaf": lambda a, d: (leaf_hash(b"not in the tree"), a[1], a[2], a[3], a[4]),
    "neighbour-leaf": lambda a, d: (d[a[1] ^ 1], a[1], a[2], a[3], a[4]) if a[1] ^ 1 < a[2] else None,
    "wrong-root": lambda a, d: (a[0], a[1], a[2], a[3], flip(a[4])),
    "root-is-leaf": lambda a, d: (a[0], a[1], a[2], a[3], a[0]) if a[2] > 1 else None,
    "flip-first": lambda a, d: (a[0], a[1], a[2], [flip(a[3][0], 7), *a[3][1:]], a[4]) if a[3] else None,
    "flip-last": lambda a, d: (a[0], a[1], a[2], [*a[3][:-1], flip(a[3][-1], 3)], a[4]) if a[3] else None,
    "drop-first": lambda a, d: (a[0], a[1], a[2], a[3][1:], a[4]) if a[3] else None,
    "drop-last": lambda a, d: (a[0], a[1], a[2], a[3][:-1], a[4]) if a[3] else None,
    "add-last": lambda a, d: (a[0], a[1], a[2], [*a[3], a[4]], a[4]),
    "add-first": lambda a, d: (a[0], a[1], a[2], [a[0], *a[3]], a[4]),
    "swap-leaf-root": lambda a, d: (a[4], a[1], a[2], a[3], a[0]) if a[2] > 1 else None,
    "leaf-31": lambda a, d: (a[0][:31], a[1], a[2], a[3], a[4]),
    "leaf-33": lambda a, d: (a[0] + b"\x00", a[1], a[2], a[3], a[4]),
    "root-31": lambda a, d: (a[0], a[1], a[2], a[3], a[4][:31]),
    "root-33": lambda a, d: (a[0], a[1], a[2], a[3], a[4] + b"\x00"),
    "proof-31": lambda a, d: (a[0], a[1], a[2], [a[3][0][:31], *a[3][1:]], a[4]) if a[3] else None,
    "proof-33": lambda a, d: (a[0], a[1], a[2], [*a[3][:-1], a[3][-1] + b"\x00"], a[4]) if a[3] else None,
}

# Not here: new_size + 1. RFC 9162 proofs cannot refute it: e.g. the proof 1 -> 3 also "proves" 1 -> 4
# with the size-3 root, as that root is what a 4-leaf tree would have if leaf 2's hash were the node
# over leaves 2 and 3. The claim is bound to its signed checkpoint, which names the size.
CONSISTENCY_MUTATIONS: dict[str, Callable[[ConsistencyArgs, list[bytes]], ConsistencyArgs | None]] = {
    "old+1": lambda a, d: (a[0] + 1, a[1], a[2], a[3], a[4]),
    "old-1": lambda a, d: (a[0] - 1, a[1], a[2], a[3], a[4]),
    "old*2": lambda a, d: (a[0] * 2, a[1], a[2], a[3], a[4]),
    "old//2": lambda a, d: (a[0] // 2, a[1], a[2], a[3], a[4]),
    "new*2": lambda a, d: (a[0], a[1] * 2, a[2], a[3], a[4]),
    "new//2": lambda a, d: (a[0], a[1] // 2, a[2], a[3], a[4]),
    "wrong-old-root": lambda a, d: (a[0], a[1], flip(a[2]), a[3], a[4]),
    "wrong-new-root": lambda a, d: (a[0], a[1], a[2], flip(a[3], 5), a[4]),
    "swapped-roots": lambda a, d: (a[0], a[1], a[3], a[2], a[4]) if a[0] != a[1] else None,
    "flip-first": lambda a, d: (a[0], a[1], a[2], a[3], [flip(a[4][0], 1), *a[4][1:]]) if a[4] else None,
    "flip-last": lambda a, d: (a[0], a[1], a[2], a[3], [*a[4][:-1], flip(a[4][-1], 6)]) if a[4] else None,
    "drop-first": lambda a, d: (a[0], a[1], a[2], a[3], a[4][1:]) if a[4] else None,
    "drop-last": lambda a, d: (a[0], a[1], a[2], a[3], a[4][:-1]) if a[4] else None,
    "add-last": lambda a, d: (a[0], a[1], a[2], a[3], [*a[4], a[3]]),
    "add-first": lambda a, d: (a[0], a[1], a[2], a[3], [a[2], *a[4]]),
    "old-root-31": lambda a, d: (a[0], a[1], a[2][:31], a[3], a[4]),
    "new-root-33": lambda a, d: (a[0], a[1], a[2], a[3] + b"\x00", a[4]),
    "proof-31": lambda a, d: (a[0], a[1], a[2], a[3], [a[4][0][:31], *a[4][1:]]) if a[4] else None,
    "proof-33": lambda a, d: (a[0], a[1], a[2], a[3], [*a[4][:-1], a[4][-1] + b"\x00"]) if a[4] else None,
}


@pytest.mark.parametrize("name", sorted(INCLUSION_MUTATIONS))
@settings(max_examples=60, deadline=None)
@given(case=inclusion_cases())
def test_mutated_inclusion_proof_is_rejected(name: str, case: tuple[list[bytes], int]) -> None:
    d, m = case
    valid: InclusionArgs = (d[m], m, len(d), inclusion_proof(d, m), root_hash(d))
    verify_inclusion(*valid)
    mutated = INCLUSION_MUTATIONS[name](valid, d)
    if mutated is not None:
        with pytest.raises(ProofError):
            verify_inclusion(*mutated)


@pytest.mark.parametrize("name", sorted(CONSISTENCY_MUTATIONS))
@settings(max_examples=60, deadline=None)
@given(case=consistency_cases())
def test_mutated_consistency_proof_is_rejected(name: str, case: tuple[list[bytes], int]) -> None:
    d, m = case
    valid: ConsistencyArgs = (m, len(d), root_hash(d[:m]), root_hash(d), consistency_proof(d, m))
    verify_consistency(*valid)
    mutated = CONSISTENCY_MUTATIONS[name](valid, d)
    if mutated is not None:
        with pytest.raises(ProofError):
            verify_consistency(*mutated)


@pytest.mark.parametrize("n", range(1, 33))
def test_every_mutation_rejected_exhaustively_on_small_trees(n: int) -> None:
    d = distinct_leaves(b"mutate", n)
    root = root_hash(d)
    applied = 0
    for m in range(n):
        valid_i: InclusionArgs = (d[m], m, n, inclusion_proof(d, m), root)
        for name, mutate_i in INCLUSION_MUTATIONS.items():
            args_i = mutate_i(valid_i, d)
            if args_i is not None:
                applied += 1
                with pytest.raises(ProofError):
                    verify_inclusion(*args_i)
                    pytest.fail(f"inclusion mutation {name} accepted at index {m}")
    for m in range(1, n + 1):
        valid_c: ConsistencyArgs = (m, n, root_hash(d[:m]), root, consistency_proof(d, m))
        for name, mutate_c in CONSISTENCY_MUTATIONS.items():
            args_c = mutate_c(valid_c, d)
            if args_c is not None:
                applied += 1
                with pytest.raises(ProofError):
                    verify_consistency(*args_c)
                    pytest.fail(f"consistency mutation {name} accepted from size {m}")
    assert applied >= n * 10
