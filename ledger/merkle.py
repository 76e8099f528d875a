"""RFC 6962 / RFC 9162 Merkle tree hashing and proofs over in-memory leaf hashes.

This is the reference the store-backed tree (`ledger.tree`) must agree with and what the offline
verifier runs, so it is pure: bytes in, bytes out, no I/O. Generation follows RFC 9162 section 2.1
literally (recursive definitions); verification follows the iterative algorithms of sections 2.1.3.2
and 2.1.4.2 step by step, with a stricter input policy: every hash is exactly 32 bytes and sizes and
proof lengths are checked before any hashing, so a malformed proof is named, not just "mismatch".
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "ProofError",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "root_hash",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
"""SHA-256 output length; every leaf hash, node hash, root and proof element must have it."""

EMPTY_ROOT = hashlib.sha256(b"").digest()
"""MTH({}) = SHA-256() (RFC 9162 section 2.1.1)."""

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"


class ProofError(ValueError):
    """A proof, or the request for one, is invalid; the message says which input and why."""


def _check_hash(value: bytes, what: str) -> None:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise ProofError(f"{what} must be bytes, got {type(value).__name__}")
    if len(value) != HASH_SIZE:
        raise ProofError(f"{what} is {len(value)} bytes; a SHA-256 hash is exactly {HASH_SIZE}")


def _check_size(value: int, what: str) -> None:
    # bool is an int subclass; True as a tree size is always a caller bug.
    if not isinstance(value, int) or isinstance(value, bool):
        raise ProofError(f"{what} must be an int, got {type(value).__name__}")
    if value < 0:
        raise ProofError(f"{what} must be >= 0, got {value}")


def leaf_hash(data: bytes) -> bytes:
    """SHA-256(0x00 || data): the 0x00 prefix keeps a leaf from ever passing for an interior node."""
    return hashlib.sha256(_LEAF_PREFIX + bytes(data)).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right), refusing children that are not 32-byte hashes."""
    if len(left) != HASH_SIZE or len(right) != HASH_SIZE:
        raise ValueError(f"node children must be {HASH_SIZE}-byte hashes, got {len(left)} and {len(right)}")
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


def _node(left: bytes, right: bytes) -> bytes:
    # Unchecked twin of node_hash for the inner loops, where lengths were validated on entry.
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly smaller than n (n >= 2): RFC 9162's k."""
    return 1 << ((n - 1).bit_length() - 1)


def _mth(leaves: Sequence[bytes], lo: int, hi: int) -> bytes:
    """MTH(D[lo:hi]) for hi > lo, without slicing copies.

    Folds the perfect subtrees of the range right to left, which is the RFC recursion unrolled: the
    range splits at the largest power of two, whose left part is perfect.
    """
    stack: list[tuple[int, bytes]] = []  # (height, hash) of perfect subtrees, left to right
    for i in range(lo, hi):
        h = leaves[i]
        height = 0
        while stack and stack[-1][0] == height:
            h = _node(stack.pop()[1], h)
            height += 1
        stack.append((height, h))
    root = stack[-1][1]
    for _, left in reversed(stack[:-1]):
        root = _node(left, root)
    return root


def _check_leaves(leaf_hashes: Sequence[bytes]) -> None:
    for i, h in enumerate(leaf_hashes):
        _check_hash(h, f"leaf hash {i}")


def root_hash(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH(D[n]) over leaf hashes (RFC 9162 section 2.1.1); EMPTY_ROOT for no leaves."""
    _check_leaves(leaf_hashes)
    if not leaf_hashes:
        return EMPTY_ROOT
    return _mth(leaf_hashes, 0, len(leaf_hashes))


def inclusion_proof(leaf_hashes: Sequence[bytes], index: int) -> list[bytes]:
    """PATH(m, D[n]) of RFC 9162 section 2.1.3.1, ordered from the leaf up to the root."""
    _check_size(index, "index")
    n = len(leaf_hashes)
    if index >= n:
        raise ProofError(f"index {index} is not in a tree of size {n}")
    _check_leaves(leaf_hashes)
    path: list[bytes] = []  # built root-first, reversed at the end
    lo, hi, m = 0, n, index
    while hi - lo > 1:
        k = _split(hi - lo)
        if m < k:
            # PATH(m, D[0:k]) : MTH(D[k:n])
            path.append(_mth(leaf_hashes, lo + k, hi))
            hi = lo + k
        else:
            # PATH(m - k, D[k:n]) : MTH(D[0:k])
            path.append(_mth(leaf_hashes, lo, lo + k))
            lo, m = lo + k, m - k
    path.reverse()
    return path


def consistency_proof(leaf_hashes: Sequence[bytes], old_size: int) -> list[bytes]:
    """PROOF(m, D[n]) of RFC 9162 section 2.1.4.1; empty when old_size equals the tree size.

    A proof from the empty tree is refused: it would prove nothing, and verify_consistency rejects it.
    """
    _check_size(old_size, "old_size")
    n = len(leaf_hashes)
    if old_size == 0:
        raise ProofError("no consistency proof from size 0: every tree extends the empty tree")
    if old_size > n:
        raise ProofError(f"old_size {old_size} is larger than the tree size {n}")
    _check_leaves(leaf_hashes)
    proof: list[bytes] = []  # SUBPROOF appends root-first; reversed at the end
    lo, hi, m, b = 0, n, old_size, True
    while True:
        if m == hi - lo:
            # SUBPROOF(m, D[m], true) = {}; SUBPROOF(m, D[m], false) = {MTH(D[m])}
            if not b:
                proof.append(_mth(leaf_hashes, lo, hi))
            break
        k = _split(hi - lo)
        if m <= k:
            # SUBPROOF(m, D[0:k], b) : MTH(D[k:n])
            proof.append(_mth(leaf_hashes, lo + k, hi))
            hi = lo + k
        else:
            # SUBPROOF(m - k, D[k:n], false) : MTH(D[0:k])
            proof.append(_mth(leaf_hashes, lo, lo + k))
            lo, m, b = lo + k, m - k, False
    proof.reverse()
    return proof


def _inclusion_proof_length(index: int, size: int) -> int:
    # Siblings below the level where the paths to `index` and to the last leaf part ("inner"),
    # plus one left sibling for every 1 bit of index above it ("border").
    inner = (index ^ (size - 1)).bit_length()
    return inner + (index >> inner).bit_count()


def verify_inclusion(
    leaf_hash: bytes, index: int, tree_size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that `leaf_hash` is leaf `index` of the tree of `tree_size` with `root`; raise ProofError if not.

    RFC 9162 section 2.1.3.2, with the lengths of every hash and of the proof checked first.
    """
    _check_size(index, "index")
    _check_size(tree_size, "tree_size")
    _check_hash(leaf_hash, "leaf hash")
    _check_hash(root, "root")
    for i, p in enumerate(proof):
        _check_hash(p, f"proof element {i}")
    leaf_hash, root = bytes(leaf_hash), bytes(root)

    # 1. If leaf_index is greater than or equal to tree_size, fail the proof verification.
    if index >= tree_size:
        raise ProofError(f"index {index} is not in a tree of size {tree_size}")
    # (Stricter than the RFC, which finds this in steps 4a and 5: name the wrong length up front.)
    want = _inclusion_proof_length(index, tree_size)
    if len(proof) != want:
        raise ProofError(
            f"inclusion proof for index {index} in tree size {tree_size} has {len(proof)} hashes, want {want}"
        )
    # 2. Set fn to leaf_index and sn to tree_size - 1.
    fn, sn = index, tree_size - 1
    # 3. Set r to hash.
    r = leaf_hash
    # 4. For each value p in the inclusion_path array:
    for p in map(bytes, proof):
        # 4a. If sn is 0, then stop the iteration and fail the proof verification.
        if sn == 0:
            raise ProofError("inclusion proof is longer than the path to the root")
        # 4b. If LSB(fn) is set, or if fn is equal to sn, then:
        if fn & 1 or fn == sn:
            # 4b.i. Set r to HASH(0x01 || p || r).
            r = _node(p, r)
            # 4b.ii. If LSB(fn) is not set, then right-shift both fn and sn equally until either
            # LSB(fn) is set or fn is 0.
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            # 4b. Otherwise: Set r to HASH(0x01 || r || p).
            r = _node(r, p)
        # 4c. Finally, right-shift both fn and sn one time.
        fn >>= 1
        sn >>= 1
    # 5. Compare sn to 0. Compare r against the root_hash. If sn is equal to 0 and r and the root_hash
    # are equal, then the log has proven the inclusion of hash. Otherwise, fail the proof verification.
    if sn != 0:
        raise ProofError("inclusion proof is shorter than the path to the root")
    if r != root:
        raise ProofError(
            f"inclusion proof for index {index} in tree size {tree_size} leads to root {r.hex()}, "
            f"not the given root {root.hex()}"
        )


def _consistency_proof_length(old_size: int, new_size: int) -> int:
    # The inclusion path of the last old leaf, minus the levels inside the largest perfect subtree
    # that ends at old_size, plus that subtree's root unless it is the whole old tree.
    shift = (old_size & -old_size).bit_length() - 1
    inner = ((old_size - 1) ^ (new_size - 1)).bit_length()
    border = ((old_size - 1) >> inner).bit_count()
    seed = 0 if old_size == 1 << shift else 1
    return seed + inner - shift + border


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Check that the tree of `new_size` with `new_root` extends the one of `old_size` with `old_root`.

    RFC 9162 section 2.1.4.2, plus: sizes are checked (old_size 0 is refused, even 0 -> 0, as such a
    proof proves nothing), equal sizes need an empty proof and equal roots, and every hash and the
    proof length are checked before hashing. Raises ProofError with the reason.
    """
    _check_size(old_size, "old_size")
    _check_size(new_size, "new_size")
    _check_hash(old_root, "old root")
    _check_hash(new_root, "new root")
    for i, c in enumerate(proof):
        _check_hash(c, f"proof element {i}")
    old_root, new_root = bytes(old_root), bytes(new_root)
    if old_size == 0:
        raise ProofError("no consistency proof from size 0: every tree extends the empty tree")
    if old_size > new_size:
        raise ProofError(f"old_size {old_size} is larger than new_size {new_size}")
    if old_size == new_size:
        # RFC 9162 defines the proof for 0 < first < second; for equal sizes the trees are the same.
        if proof:
            raise ProofError(
                f"consistency proof between equal sizes {old_size} must be empty, has {len(proof)}"
            )
        if old_root != new_root:
            raise ProofError(f"roots differ for the same tree size {old_size}")
        return
    want = _consistency_proof_length(old_size, new_size)
    if len(proof) != want:
        raise ProofError(
            f"consistency proof from size {old_size} to {new_size} has {len(proof)} hashes, want {want}"
        )

    # 1. If consistency_path is an empty array, stop and fail the proof verification.
    if not proof:
        raise ProofError("consistency proof is empty")
    path = [bytes(c) for c in proof]
    # 2. If first is an exact power of 2, then prepend first_hash to the consistency_path array.
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    # 3. Set fn to first - 1 and sn to second - 1.
    fn, sn = old_size - 1, new_size - 1
    # 4. If LSB(fn) is set, then right-shift both fn and sn equally until LSB(fn) is not set.
    while fn & 1:
        fn >>= 1
        sn >>= 1
    # 5. Set both fr and sr to the first value in the consistency_path array.
    fr = sr = path[0]
    # 6. For each subsequent value c in the consistency_path array:
    for c in path[1:]:
        # 6a. If sn is 0, then stop the iteration and fail the proof verification.
        if sn == 0:
            raise ProofError("consistency proof is longer than the path to the root")
        # 6b. If LSB(fn) is set, or if fn is equal to sn, then:
        if fn & 1 or fn == sn:
            # 6b.i. Set fr to HASH(0x01 || c || fr).
            fr = _node(c, fr)
            # 6b.ii. Set sr to HASH(0x01 || c || sr).
            sr = _node(c, sr)
            # 6b.iii. If LSB(fn) is not set, then right-shift both fn and sn equally until either
            # LSB(fn) is set or fn is 0.
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            # 6b. Otherwise: Set sr to HASH(0x01 || sr || c).
            sr = _node(sr, c)
        # 6c. Finally, right-shift both fn and sn one time.
        fn >>= 1
        sn >>= 1
    # 7. Verify that fr equals first_hash, that sr equals second_hash, and that sn is 0.
    if sn != 0:
        raise ProofError("consistency proof is shorter than the path to the root")
    if fr != old_root:
        raise ProofError(
            f"consistency proof from size {old_size} leads to old root {fr.hex()}, not {old_root.hex()}"
        )
    if sr != new_root:
        raise ProofError(
            f"consistency proof to size {new_size} leads to new root {sr.hex()}, not {new_root.hex()}"
        )
