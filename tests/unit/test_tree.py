"""The store-backed tree must produce exactly what the list-based reference produces, touching only
O(log n) stored nodes in one `get` call."""

from __future__ import annotations

from collections.abc import Iterable
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.merkle import (
    EMPTY_ROOT,
    ProofError,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    root_hash,
    verify_consistency,
    verify_inclusion,
)
from ledger.tree import (
    MemoryNodes,
    MissingNodeError,
    Node,
    NodeKey,
    consistency_proof_from_nodes,
    inclusion_proof_from_nodes,
    nodes_for_append,
    range_nodes,
    root_from_nodes,
)

MAX = 300
LEAVES = [leaf_hash(b"tree" + i.to_bytes(4, "big")) for i in range(MAX)]


class CountingGet:
    """Wraps a store's get to record how often it is called and with how many keys."""

    def __init__(self, store: MemoryNodes) -> None:
        self.store = store
        self.calls: list[list[NodeKey]] = []

    def __call__(self, keys: Iterable[NodeKey]) -> dict[NodeKey, bytes]:
        wanted = list(keys)
        self.calls.append(wanted)
        return self.store.get(wanted)

    @property
    def keys(self) -> int:
        return sum(len(c) for c in self.calls)


class AnyNode:
    """A store that has every node (a fixed dummy hash), for counting keys on astronomically big trees."""

    def __init__(self) -> None:
        self.calls: list[list[NodeKey]] = []

    def __call__(self, keys: Iterable[NodeKey]) -> dict[NodeKey, bytes]:
        wanted = list(keys)
        self.calls.append(wanted)
        assert len(set(wanted)) == len(wanted), "a key was asked for twice"
        return {k: EMPTY_ROOT for k in wanted}


def build(leaves: list[bytes], batches: Iterable[int] = ()) -> tuple[MemoryNodes, list[Node]]:
    store, size, out = MemoryNodes(), 0, []
    sizes = list(batches) or [len(leaves)]
    for k in sizes:
        batch = leaves[size : size + k]
        new = nodes_for_append(size, batch, store.get)
        store.put(new)
        out.extend(new)
        size += len(batch)
    if size < len(leaves):
        new = nodes_for_append(size, leaves[size:], store.get)
        store.put(new)
        out.extend(new)
    return store, out


@pytest.fixture(scope="module")
def store() -> MemoryNodes:
    return build(LEAVES)[0]


# transparency-dev/merkle testonly/constants.go, NodeHashes(): every perfect-subtree node of the RFC 6962
# reference tree of 8 leaves (the CT leaf inputs), by level then index.
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
CT_NODES = [
    [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7",
        "07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7",
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        "4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658",
        "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
        "46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1",
    ],
    [
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
    ],
    [
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ],
    ["5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"],
]


def test_ct_reference_tree_nodes_one_by_one() -> None:
    _, nodes = build([leaf_hash(x) for x in CT_LEAVES], batches=[1] * 8)
    want = {(level, i, bytes.fromhex(h)) for level, row in enumerate(CT_NODES) for i, h in enumerate(row)}
    assert set(nodes) == want
    assert len(nodes) == len(want) == 15


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(0, MAX),
    cuts=st.lists(st.integers(1, 70), max_size=40),
)
def test_batch_splits_store_the_same_nodes_as_one_by_one(n: int, cuts: list[int]) -> None:
    leaves = LEAVES[:n]
    _, one_by_one = build(leaves, batches=[1] * n)
    _, split = build(leaves, batches=cuts)
    assert split == one_by_one
    # Every perfect subtree exactly once: n leaves plus n - popcount(n) interior nodes, ~2 per leaf.
    assert len(split) == len({(lv, i) for lv, i, _ in split}) == 2 * n - n.bit_count()


def test_sizes_up_to_max_roots_and_every_proof_verify(store: MemoryNodes) -> None:
    # Equality with merkle.py for every index is checked below up to 96 leaves and sampled up to MAX;
    # here every proof of every size up to MAX is checked against merkle.py's root, which (short of a
    # SHA-256 collision) only the one correct proof can reach.
    roots = [root_hash(LEAVES[:n]) for n in range(MAX + 1)]
    for n in range(MAX + 1):
        assert root_from_nodes(n, store.get) == roots[n]
    for n in range(1, MAX + 1):
        for i in range(n):
            verify_inclusion(LEAVES[i], i, n, inclusion_proof_from_nodes(i, n, store.get), roots[n])
        for m in range(1, n + 1):
            verify_consistency(m, n, roots[m], roots[n], consistency_proof_from_nodes(m, n, store.get))


@pytest.mark.parametrize("n", range(1, 97))
def test_proofs_equal_merkle_for_every_index(store: MemoryNodes, n: int) -> None:
    d = LEAVES[:n]
    for i in range(n):
        assert inclusion_proof_from_nodes(i, n, store.get) == inclusion_proof(d, i)
    for m in range(1, n + 1):
        assert consistency_proof_from_nodes(m, n, store.get) == consistency_proof(d, m)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_proofs_equal_merkle_sampled(store: MemoryNodes, data: st.DataObject) -> None:
    n = data.draw(st.integers(1, MAX))
    i = data.draw(st.integers(0, n - 1))
    m = data.draw(st.integers(1, n))
    assert inclusion_proof_from_nodes(i, n, store.get) == inclusion_proof(LEAVES[:n], i)
    assert consistency_proof_from_nodes(m, n, store.get) == consistency_proof(LEAVES[:n], m)


# --- O(log n) stored nodes, one get call -----------------------------------------------------------


def test_key_counts_on_stored_tree(store: MemoryNodes) -> None:
    for n in range(1, MAX + 1):
        bound = 2 * n.bit_length() + 1
        get = CountingGet(store)
        root_from_nodes(n, get)
        assert len(get.calls) == 1
        assert get.keys == n.bit_count()
        for i in range(0, n, 7):
            get = CountingGet(store)
            inclusion_proof_from_nodes(i, n, get)
            assert len(get.calls) <= 1
            assert get.keys <= bound
        for m in range(1, n, 7):
            get = CountingGet(store)
            consistency_proof_from_nodes(m, n, get)
            assert len(get.calls) == 1
            assert get.keys <= bound


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_key_counts_are_logarithmic_on_huge_trees(data: st.DataObject) -> None:
    n = data.draw(st.integers(1, 2**62))
    i = data.draw(st.integers(0, n - 1))
    m = data.draw(st.integers(1, n))
    bound = 2 * n.bit_length() + 1
    for call in (
        lambda g: root_from_nodes(n, g),
        lambda g: inclusion_proof_from_nodes(i, n, g),
        lambda g: consistency_proof_from_nodes(m, n, g),
    ):
        get = AnyNode()
        call(get)
        assert len(get.calls) <= 1
        assert sum(len(c) for c in get.calls) <= bound
    get = AnyNode()
    nodes = nodes_for_append(n, LEAVES[:3], get)
    assert len(get.calls) == 1 and len(get.calls[0]) == n.bit_count()
    assert [(lv, i) for lv, i, _ in nodes if lv == 0] == [(0, n), (0, n + 1), (0, n + 2)]


def test_append_reads_only_the_right_edge(store: MemoryNodes) -> None:
    for start in range(MAX - 10):
        get = CountingGet(store)
        new = nodes_for_append(start, LEAVES[start : start + 10], get)
        assert len(get.calls) == (1 if start else 0)
        assert get.keys == start.bit_count()
        assert sorted(get.calls[0] if get.calls else []) == sorted(range_nodes(0, start))
        assert all(store.get([(lv, i)]) == {(lv, i): h} for lv, i, h in new)


def test_range_nodes_tile_the_range_exactly() -> None:
    for begin in range(70):
        for end in range(begin, 140):
            covered: list[int] = []
            for level, index in range_nodes(begin, end):
                assert index << level >= begin
                covered.extend(range(index << level, (index + 1) << level))
            assert covered == list(range(begin, end))
            # Never two adjacent siblings: a compact range is the fewest perfect subtrees.
            keys = range_nodes(begin, end)
            assert all(not (a[0] == b[0] and a[1] ^ 1 == b[1] and a[1] % 2 == 0) for a, b in pairwise(keys))


# --- errors ----------------------------------------------------------------------------------------


def test_missing_node_is_named() -> None:
    with pytest.raises(MissingNodeError, match=r"node \(level 2, index 0\) needed for appending"):
        nodes_for_append(5, LEAVES[5:6], MemoryNodes().get)
    partial = MemoryNodes()
    partial.put((lv, i, h) for lv, i, h in build(LEAVES[:8])[1] if (lv, i) != (0, 6))
    with pytest.raises(MissingNodeError, match=r"\(level 0, index 6\) needed for the inclusion proof of 7"):
        inclusion_proof_from_nodes(7, 8, partial.get)


def test_corrupt_node_length_is_refused() -> None:
    bad = MemoryNodes()
    bad.put([(0, 0, b"short")])
    with pytest.raises(MissingNodeError, match="is 5 bytes"):
        root_from_nodes(1, bad.get)


def test_argument_errors(store: MemoryNodes) -> None:
    with pytest.raises(ProofError, match="not in a tree of size 5"):
        inclusion_proof_from_nodes(5, 5, store.get)
    with pytest.raises(ProofError, match="from size 0"):
        consistency_proof_from_nodes(0, 5, store.get)
    with pytest.raises(ProofError, match="larger than new_size"):
        consistency_proof_from_nodes(6, 5, store.get)
    with pytest.raises(ProofError, match="int >= 0"):
        root_from_nodes(-1, store.get)
    with pytest.raises(ProofError, match="33 bytes"):
        nodes_for_append(0, [LEAVES[0] + b"\x00"], store.get)
    assert consistency_proof_from_nodes(5, 5, store.get) == []
    assert root_from_nodes(0, store.get) == EMPTY_ROOT
    assert nodes_for_append(7, [], store.get) == []


def test_memory_nodes_refuse_rewriting_a_node() -> None:
    mem = MemoryNodes()
    mem.put([(0, 0, LEAVES[0])])
    mem.put([(0, 0, LEAVES[0])])  # idempotent rewrite is fine
    with pytest.raises(ValueError, match="already stored with another hash"):
        mem.put([(0, 0, LEAVES[1])])
    assert len(mem) == 1
    assert mem.get([(0, 0), (0, 1)]) == {(0, 0): LEAVES[0]}
