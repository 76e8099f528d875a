"""The incremental, store-backed Merkle tree: which nodes to store, and how to read proofs back.

The store keeps only nodes of PERFECT subtrees, keyed by (level, index): level 0 holds the leaf
hashes and node (l, i) covers leaves [i * 2**l, (i + 1) * 2**l). Such a node never changes once
written, so appends only insert rows. Any root or proof of a tree of size n is a fold over
O(log n) of these nodes, so every function here first computes the full key set it needs and
fetches it with a single `get` call (one SQL round trip), then hashes in memory.

The results are byte-for-byte those of the list-based reference in `ledger.merkle`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

from ledger.merkle import EMPTY_ROOT, HASH_SIZE, ProofError, _node

__all__ = [
    "GetNodes",
    "MemoryNodes",
    "MissingNodeError",
    "Node",
    "NodeKey",
    "consistency_proof_from_nodes",
    "inclusion_proof_from_nodes",
    "nodes_for_append",
    "range_nodes",
    "root_from_nodes",
]

NodeKey = tuple[int, int]
"""(level, index) of a perfect subtree."""

Node = tuple[int, int, bytes]
"""(level, index, hash): one row to store."""

GetNodes = Callable[[Iterable[NodeKey]], Mapping[NodeKey, bytes]]
"""Fetch stored nodes by key; keys that are not stored are simply absent from the result."""


class MissingNodeError(LookupError):
    """The store lacks a node the tree size says must exist: the store is corrupt or the size is wrong."""


def range_nodes(begin: int, end: int) -> list[NodeKey]:
    """The perfect subtrees that exactly tile leaves [begin, end), left to right (a "compact range").

    Greedy: at each position take the largest aligned power-of-two block that still fits.
    """
    keys: list[NodeKey] = []
    while begin < end:
        # Largest level allowed by alignment of `begin` (any level if begin == 0) and by what is left.
        align = (begin & -begin).bit_length() - 1 if begin else (end - begin).bit_length()
        level = min(align, (end - begin).bit_length() - 1)
        keys.append((level, begin >> level))
        begin += 1 << level
    return keys


def _fetch(get: GetNodes, keys: list[NodeKey], why: str) -> Mapping[NodeKey, bytes]:
    if not keys:
        return {}
    found = get(keys)
    for key in keys:
        h = found.get(key)
        if h is None:
            raise MissingNodeError(f"node (level {key[0]}, index {key[1]}) needed for {why} is not stored")
        if len(h) != HASH_SIZE:
            raise MissingNodeError(
                f"node (level {key[0]}, index {key[1]}) needed for {why} is {len(h)} bytes, not {HASH_SIZE}"
            )
    return found


def _fold(hashes: Sequence[bytes]) -> bytes:
    """Merkle hash of a compact range given its subtree hashes left to right: fold from the right.

    This is RFC 9162's MTH recursion unrolled: a range that starts at a boundary aligned to a power
    of two at least its length splits at the largest power of two, whose left part is perfect.
    """
    acc = hashes[-1]
    for h in reversed(hashes[:-1]):
        acc = _node(h, acc)
    return acc


def _check_size(value: int, what: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ProofError(f"{what} must be an int >= 0, got {value!r}")


def nodes_for_append(start_size: int, leaf_hashes: Sequence[bytes], get: GetNodes) -> list[Node]:
    """Every node that appending `leaf_hashes` to a tree of `start_size` leaves completes, leaves included.

    Only the right edge of the existing tree (its compact range, one node per 1 bit of start_size) is
    read, in one `get` call. Each new leaf is pushed on that edge and merged with equal-height
    neighbours, as in binary addition: about 2 nodes per leaf, O(k + log n) for a batch of k.
    """
    _check_size(start_size, "start_size")
    for i, h in enumerate(leaf_hashes):
        if len(h) != HASH_SIZE:
            raise ProofError(f"leaf hash {i} of the batch is {len(h)} bytes, not {HASH_SIZE}")
    if not leaf_hashes:
        return []
    edge = range_nodes(0, start_size)
    found = _fetch(get, edge, f"appending to a tree of size {start_size}")
    # Stack of (level, index, hash) of the current right edge, highest level first.
    stack: list[Node] = [(level, index, found[level, index]) for level, index in edge]
    out: list[Node] = []
    for offset, h in enumerate(leaf_hashes):
        level, index, h = 0, start_size + offset, bytes(h)
        out.append((0, index, h))
        # A right child (odd index) completes its parent, whose left sibling is on top of the stack.
        while index & 1:
            _, _, left = stack.pop()
            level, index, h = level + 1, index >> 1, _node(left, h)
            out.append((level, index, h))
        stack.append((level, index, h))
    return out


def root_from_nodes(size: int, get: GetNodes) -> bytes:
    """MTH of the first `size` leaves, from the log2(size) perfect subtrees tiling them."""
    _check_size(size, "size")
    if size == 0:
        return EMPTY_ROOT
    keys = range_nodes(0, size)
    found = _fetch(get, keys, f"the root of tree size {size}")
    return _fold([found[k] for k in keys])


def _path_keys(index: int, level: int, size: int) -> tuple[list[NodeKey], list[NodeKey], list[NodeKey]]:
    """Keys of the inclusion path of node (level, index) in the tree of `size` leaves.

    Returns (siblings, ephemeral, left): the complete siblings below the "fork" (where the path to
    the node parts from the path to leaf `size`), the compact range of the incomplete sibling of the
    fork (hashed into one proof element), and the left siblings above the fork, leaf to root.
    Right siblings above the fork would lie past the end of the tree, so there are none.
    """
    inner = (index ^ (size >> level)).bit_length() - 1
    fork_level, fork_index = level + inner, index >> inner
    begin, end = fork_index << fork_level, (fork_index + 1) << fork_level
    siblings = [(level + i, (index >> i) ^ 1) for i in range(inner)]
    return siblings, range_nodes(end, size), range_nodes(0, begin)[::-1]


def _path(
    siblings: list[NodeKey], ephemeral: list[NodeKey], left: list[NodeKey], found: Mapping[NodeKey, bytes]
) -> list[bytes]:
    proof = [found[k] for k in siblings]
    if ephemeral:
        proof.append(_fold([found[k] for k in ephemeral]))
    proof.extend(found[k] for k in left)
    return proof


def inclusion_proof_from_nodes(index: int, size: int, get: GetNodes) -> list[bytes]:
    """The RFC 9162 inclusion proof of leaf `index` in the tree of `size`, from O(log n) stored nodes."""
    _check_size(index, "index")
    _check_size(size, "size")
    if index >= size:
        raise ProofError(f"index {index} is not in a tree of size {size}")
    siblings, ephemeral, left = _path_keys(index, 0, size)
    found = _fetch(get, siblings + ephemeral + left, f"the inclusion proof of {index} in tree size {size}")
    return _path(siblings, ephemeral, left, found)


def consistency_proof_from_nodes(old_size: int, new_size: int, get: GetNodes) -> list[bytes]:
    """The RFC 9162 consistency proof from `old_size` to `new_size`, from O(log n) stored nodes.

    It is the inclusion path, in the new tree, of the largest perfect subtree ending at old_size,
    preceded by that subtree's root unless it is the whole old tree (the verifier has that root).
    """
    _check_size(old_size, "old_size")
    _check_size(new_size, "new_size")
    if old_size == 0:
        raise ProofError("no consistency proof from size 0: every tree extends the empty tree")
    if old_size > new_size:
        raise ProofError(f"old_size {old_size} is larger than new_size {new_size}")
    if old_size == new_size:
        return []
    level = (old_size & -old_size).bit_length() - 1
    index = (old_size - 1) >> level
    siblings, ephemeral, left = _path_keys(index, level, new_size)
    seed = [(level, index)] if index else []
    found = _fetch(
        get,
        seed + siblings + ephemeral + left,
        f"the consistency proof from size {old_size} to {new_size}",
    )
    return [found[k] for k in seed] + _path(siblings, ephemeral, left, found)


class MemoryNodes:
    """A dict-backed node store with the same `get` contract as the SQL store, for tests and offline tools."""

    def __init__(self) -> None:
        self._nodes: dict[NodeKey, bytes] = {}

    def get(self, keys: Iterable[NodeKey]) -> dict[NodeKey, bytes]:
        nodes = self._nodes
        return {k: nodes[k] for k in keys if k in nodes}

    def put(self, nodes: Iterable[Node]) -> None:
        """Store nodes; rewriting a node with a different hash is refused, as stored nodes are immutable."""
        store = self._nodes
        for level, index, h in nodes:
            old = store.setdefault((level, index), h)
            if old != h:
                raise ValueError(f"node (level {level}, index {index}) is already stored with another hash")

    def __len__(self) -> int:
        return len(self._nodes)
