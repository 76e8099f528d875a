"""The ledger-store contract: the whole Ledger API over a real store, one suite for every backend.

Like eventsourcing's `tests/persistence.py`, `LedgerStoreContract` holds the tests and is not collected
by itself (its name has no `Test` prefix); each backend's module is a tiny subclass that provides the
`store_url` fixture, so SQLite and PostgreSQL run exactly the same assertions and cannot drift:

    class TestSQLiteStore(LedgerStoreContract):
        @pytest.fixture
        def store_url(self, sqlite_url: str) -> str:
            return sqlite_url

`store_url` must name an empty store (no ledger yet) private to the test. The artefacts are real: the
signed demo supply chain and its bad events (batteryledger.sample), small hand-built chains signed
here, and stores tampered with through SQL.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import event, func, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.sql.schema import Table

from batteryledger.sample import (
    REGISTERED_AT,
    SPEC,
    ChainBuilder,
    DemoChain,
    Facility,
    SignedEvent,
    demo_chain,
    out,
    ts,
)
from ledger import chain, merkle
from ledger.checkpoint import Checkpoint, open_note
from ledger.core import AppendResult, Incoming, Ledger
from ledger.provenance import Provenance, compute, nodes_from_events
from ledger.store import (
    BATCHES,
    CHECKPOINTS,
    EDGES,
    ENTRIES,
    FACILITIES,
    META,
    NODES,
    OFFSETS,
    PARKED,
    PROVENANCE,
    REJECTIONS,
    StoreError,
)
from schemas.events import Element, Kind
from schemas.reasons import EventError, Reason
from schemas.signing import decode, generate_key, key_id, public_key_b64, sign_object

ORIGIN = "contract.batteryledger.test/ledger"
STORE_TABLES: tuple[Table, ...] = (
    META,
    ENTRIES,
    NODES,
    CHECKPOINTS,
    BATCHES,
    EDGES,
    FACILITIES,
    REJECTIONS,
    PARKED,
    OFFSETS,
    PROVENANCE,
)
E, P = Kind.BATCH_EXTRACTED, Kind.BATCH_PROCESSED


# -- artefacts -------------------------------------------------------------------------------------
class SmallChain:
    """Hand-built events of one facility that mines and refines its own ore (so custody is trivial)."""

    FACILITY = "mine-alpha"

    def __init__(self, operator_key: Ed25519PrivateKey) -> None:
        self.operator_key = operator_key
        self.builder = ChainBuilder(operator_key, start=datetime(2025, 3, 3, tzinfo=UTC))
        self.facility = Facility(self.FACILITY, "Alpha Mining Pty Ltd", "AU", [E, P])
        self.register = self.builder.register(self.facility)

    def extracted(self, batch_id: str, kg: str = "1000", li: str = "30") -> SignedEvent:
        return self.builder.transform(self.FACILITY, E, [out(batch_id, "spodumene_concentrate", kg, li=li)])

    def processed(self, batch_id: str, parent: str, kg: str = "1000") -> SignedEvent:
        return self.builder.transform(
            self.FACILITY,
            P,
            [out(batch_id, "lithium_hydroxide", "150", li="25")],
            inputs=[(parent, kg)],
        )

    def unsigned_extracted(self, batch_id: str) -> dict[str, Any]:
        """An event object not signed yet (to sign it with two keys: same event id, other bytes)."""
        return {
            "spec": SPEC,
            "kind": E.value,
            "facility_id": self.FACILITY,
            "time": self.builder.tick(),
            "outputs": [out(batch_id, "spodumene_concentrate", "500", li="15")],
        }

    def key_rotated(self, new_key: Ed25519PrivateKey) -> bytes:
        """The registry authority adds a second key to the facility (the first stays valid)."""
        obj = {
            "spec": SPEC,
            "kind": Kind.KEY_ROTATED.value,
            "facility_id": "registry",
            "time": self.builder.tick(),
            "subject_facility_id": self.FACILITY,
            "key": {
                "key_id": key_id(new_key.public_key()),
                "public_key": public_key_b64(new_key.public_key()),
                "valid_from": ts(REGISTERED_AT),
            },
        }
        return sign_object(obj, self.operator_key)[0]


class InjectedFault(RuntimeError):
    """Raised by `fail_on_write` in place of a store write, to test that an append is all or nothing."""


@contextmanager
def fail_on_write(engine: Engine, table: str) -> Iterator[None]:
    """Make every INSERT into / UPDATE of / COPY into `table` raise, at the driver, inside the append
    transaction (the append writes its rows with COPY on PostgreSQL: store.bulk_insert)."""
    pattern = re.compile(rf"\s*(INSERT\s+INTO|UPDATE|COPY)\s+\"?{table}\"?[\s(]", re.IGNORECASE)

    def before(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if pattern.match(statement):
            raise InjectedFault(f"injected failure writing {table}")

    event.listen(engine, "before_cursor_execute", before)
    try:
        yield
    finally:
        event.remove(engine, "before_cursor_execute", before)


def _plain(value: Any) -> Any:
    return bytes(value) if isinstance(value, memoryview | bytearray) else value


def dump_store(led: Ledger) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every ledger table, in primary-key order: two equal dumps mean equal stores."""
    dump: dict[str, list[tuple[Any, ...]]] = {}
    with led.engine.connect() as conn:
        for table in STORE_TABLES:
            order = list(table.primary_key.columns) or list(table.columns)
            rows = conn.execute(select(table).order_by(*order)).all()
            dump[table.name] = [tuple(_plain(v) for v in row) for row in rows]
    return dump


def rejections(led: Ledger) -> list[Any]:
    with led.engine.connect() as conn:
        return list(conn.execute(select(REJECTIONS).order_by(REJECTIONS.c.id)).all())


def entries(led: Ledger) -> list[Any]:
    with led.engine.connect() as conn:
        return list(conn.execute(select(ENTRIES).order_by(ENTRIES.c.seq)).all())


def count(led: Ledger, table: Table, **where: Any) -> int:
    q = select(func.count()).select_from(table)
    for col, value in where.items():
        q = q.where(table.c[col] == value)
    with led.engine.connect() as conn:
        return int(conn.execute(q).scalar_one())


def statuses(results: list[AppendResult]) -> list[str]:
    return [r.status for r in results]


def demo_edges(demo: DemoChain) -> list[tuple[str, str, Decimal]]:
    """(parent, child, kg) for every input -> output of every transformation in the demo."""
    edges = []
    for e in demo.chain_events:
        ev = decode(e.raw).event
        for i in getattr(ev, "inputs", ()):
            for o in getattr(ev, "outputs", ()):
                edges.append((i.batch_id, o.batch_id, i.kg))
    return edges


def expected_lineage(
    edges: list[tuple[str, str, Decimal]], start: str, direction: str, depth: int
) -> set[tuple[str, str, int]]:
    """Breadth-first: an edge's depth is 1 + the hop count from `start` to its near end."""
    dist = {start: 0}
    frontier = [start]
    for hop in range(1, depth):
        nxt = []
        for node in frontier:
            for parent, child, _ in edges:
                near, far = (child, parent) if direction == "up" else (parent, child)
                if near == node and far not in dist:
                    dist[far] = hop
                    nxt.append(far)
        frontier = nxt
    found = set()
    for parent, child, _ in edges:
        near = child if direction == "up" else parent
        if near in dist and dist[near] < depth:
            found.add((parent, child, dist[near] + 1))
    return found


# -- the contract -----------------------------------------------------------------------------------
class LedgerStoreContract:
    """Every store backend must pass these. Subclasses provide `store_url` (an empty, private store)."""

    @pytest.fixture
    def store_url(self) -> str:
        raise NotImplementedError("a backend's test class provides the store_url fixture")

    @pytest.fixture(scope="class")
    @classmethod
    def demo(cls) -> DemoChain:
        return demo_chain()

    @pytest.fixture
    def ledger(self, store_url: str, demo: DemoChain) -> Iterator[Ledger]:
        led = Ledger.init(store_url, operator_key=demo.operator_key, origin=ORIGIN)
        try:
            yield led
        finally:
            led.close()

    @pytest.fixture
    def loaded(self, ledger: Ledger, demo: DemoChain) -> Ledger:
        """The ledger with every good event of the demo chain appended in one batch."""
        results = ledger.append([e.raw for e in demo.good_events])
        assert statuses(results) == ["appended"] * len(demo.good_events), [r.detail for r in results]
        return ledger

    @pytest.fixture(scope="class")
    @classmethod
    def reference_provenance(
        cls, demo: DemoChain, tmp_path_factory: pytest.TempPathFactory
    ) -> dict[str, Provenance]:
        """The final packs' provenance from a SQLite file store: what every backend must reproduce."""
        path: Path = tmp_path_factory.mktemp("reference") / "ledger.db"
        with Ledger.init(f"sqlite:///{path}", operator_key=demo.operator_key, origin=ORIGIN) as ref:
            ref.append([e.raw for e in demo.good_events])
            return {b: ref.provenance(b) for b in demo.final_packs}

    def reopen(self, store_url: str, demo: DemoChain) -> Ledger:
        return Ledger(store_url, operator_key=demo.operator_key)

    # -- lifecycle ---------------------------------------------------------------------------------
    def test_open_before_init_names_the_fix(self, store_url: str) -> None:
        with pytest.raises(StoreError, match="batteryledger init"):
            Ledger(store_url)

    def test_init_writes_the_genesis_registry_entry(self, ledger: Ledger, demo: DemoChain) -> None:
        [genesis] = entries(ledger)
        assert genesis.seq == 0 and genesis.kind == Kind.FACILITY_REGISTERED.value
        leaf = chain.leaf_of(bytes(genesis.data))
        assert bytes(genesis.leaf_hash) == leaf
        assert ledger.size == 1
        assert ledger.head_hash == bytes(genesis.entry_hash) == chain.entry_hash(chain.GENESIS, leaf)
        assert ledger.head().root_hash == merkle.root_hash([leaf])
        assert ledger.origin == ORIGIN
        assert set(ledger.registry.facilities) == {"registry"}

    def test_init_twice_is_refused(self, ledger: Ledger, store_url: str, demo: DemoChain) -> None:
        with pytest.raises(StoreError, match="already exists"):
            Ledger.init(store_url, operator_key=demo.operator_key, origin=ORIGIN)
        assert ledger.size == 1 and count(ledger, ENTRIES) == 1

    def test_reopen_keeps_size_head_registry_and_goes_on(
        self, loaded: Ledger, store_url: str, demo: DemoChain
    ) -> None:
        small = SmallChain(demo.operator_key)
        assert statuses(loaded.append([small.register.raw])) == ["appended"]
        before = (loaded.size, loaded.head_hash, loaded.head(), loaded.stats())
        keys = {k: (r.valid_from, r.valid_until) for k, r in loaded.registry.keys.items()}
        facilities = {f: (r.legal_entity, r.country, r.roles) for f, r in loaded.registry.facilities.items()}
        loaded.close()

        with self.reopen(store_url, demo) as again:
            assert (again.size, again.head_hash, again.head(), again.stats()) == before
            assert {k: (r.valid_from, r.valid_until) for k, r in again.registry.keys.items()} == keys
            assert {
                f: (r.legal_entity, r.country, r.roles) for f, r in again.registry.facilities.items()
            } == facilities
            # the registry read back authorises the facility registered before the restart
            [res] = again.append([small.extracted("A-ORE-1").raw])
            assert (res.status, res.seq) == ("appended", before[0])
        with pytest.raises(StoreError, match="not this ledger's operator key"):
            Ledger(store_url, operator_key=generate_key())

    # -- append: the demo chain and its bad events ---------------------------------------------------
    def test_every_good_demo_event_is_appended_with_contiguous_seq(
        self, ledger: Ledger, demo: DemoChain
    ) -> None:
        good = demo.good_events
        results = ledger.append([e.raw for e in good])
        assert [(r.event_id, r.status) for r in results] == [(e.event_id, "appended") for e in good]
        assert [r.seq for r in results] == list(range(1, len(good) + 1))
        assert ledger.size == len(good) + 1 == count(ledger, ENTRIES)
        stored = ledger.entry_data(e.event_id for e in good)
        assert {eid: (seq, data) for eid, (seq, data) in stored.items()} == {
            e.event_id: (i + 1, e.raw) for i, e in enumerate(good)
        }
        assert [row.seq for row in entries(ledger)] == list(range(len(good) + 1))

    def test_bad_demo_events_get_their_reasons_and_keep_their_bytes(
        self, loaded: Ledger, demo: DemoChain
    ) -> None:
        size, head = loaded.size, loaded.head_hash
        sources = [f"material-events/0/{900 + i}" for i in range(len(demo.bad_events))]
        results = loaded.append(
            [Incoming(raw=raw, source=src) for (_, raw, _), src in zip(demo.bad_events, sources, strict=True)]
        )
        got = {
            label: r.status if r.status == "duplicate" else r.reason
            for (label, _, _), r in zip(demo.bad_events, results, strict=True)
        }
        assert got == {label: reason for label, _, reason in demo.bad_events}
        assert sorted(r for _, _, r in demo.bad_events) == sorted(
            ["bad_signature", "overdrawn", "unknown_facility", "duplicate", "malformed"]
        )
        # nothing was appended, and every rejection kept the bytes exactly as received
        assert (loaded.size, loaded.head_hash) == (size, head)
        rows = {r.source: r for r in rejections(loaded)}
        expected = {
            src: (reason, raw)
            for (_, raw, reason), src in zip(demo.bad_events, sources, strict=True)
            if reason != "duplicate"
        }
        assert {s: (r.reason, bytes(r.raw)) for s, r in rows.items()} == expected
        assert rows[sources[-1]].event_id is None  # malformed bytes have no event id
        decided = loaded.decisions(sources=sources)
        assert {s: (d[0], d[2]) for s, d in decided.items()} == {
            s: ("rejected", reason) for s, (reason, _) in expected.items()
        }

    def test_a_replay_is_a_no_op(self, loaded: Ledger, demo: DemoChain) -> None:
        first = demo.chain_events[0]
        size, head = loaded.size, loaded.head_hash
        results = loaded.append([first.raw, first.raw])
        assert [(r.event_id, r.status, r.reason) for r in results] == [
            (first.event_id, "duplicate", None)
        ] * 2
        again = loaded.append([first.raw])
        assert statuses(again) == ["duplicate"]
        assert (loaded.size, loaded.head_hash) == (size, head)
        assert count(loaded, ENTRIES, event_id=first.event_id) == 1
        assert rejections(loaded) == []

    def test_a_new_event_twice_in_one_batch_is_appended_once(self, ledger: Ledger, demo: DemoChain) -> None:
        small = SmallChain(demo.operator_key)
        ore = small.extracted("A-ORE-1")
        results = ledger.append([small.register.raw, ore.raw, ore.raw])
        assert statuses(results) == ["appended", "appended", "duplicate"]
        assert count(ledger, ENTRIES, event_id=ore.event_id) == 1
        assert ledger.size == 3

    def test_same_event_id_with_other_bytes_is_a_duplicate_conflict(
        self, ledger: Ledger, demo: DemoChain
    ) -> None:
        # Ed25519 signatures are deterministic, so other bytes for the same event id need another key
        # of the same facility: the authority adds a second key, and the same unsigned event is signed
        # once with each. The event id (SHA-256 of the unsigned bytes) is the same, the bytes are not.
        small = SmallChain(demo.operator_key)
        second_key = generate_key()
        setup = ledger.append([small.register.raw, small.key_rotated(second_key)])
        assert statuses(setup) == ["appended", "appended"]
        obj = small.unsigned_extracted("A-ORE-7")
        with_first, eid = sign_object(obj, small.facility.key)
        with_second, eid2 = sign_object(obj, second_key)
        assert eid == eid2 and with_first != with_second

        [ok] = ledger.append([with_first])
        [conflict] = ledger.append([Incoming(raw=with_second, source="material-events/1/5")])
        assert (ok.status, conflict.status, conflict.reason) == ("appended", "rejected", "duplicate_conflict")
        assert ledger.entry_data([eid]) == {eid: (ok.seq, with_first)}
        [row] = rejections(ledger)
        assert (row.event_id, row.reason, bytes(row.raw)) == (eid, "duplicate_conflict", with_second)
        # within one batch the first version wins and the second conflicts
        obj2 = small.unsigned_extracted("A-ORE-8")
        second_first = sign_object(obj2, second_key)[0]
        first_second = sign_object(obj2, small.facility.key)[0]
        results = ledger.append([second_first, first_second])
        assert [(r.status, r.reason) for r in results] == [
            ("appended", None),
            ("rejected", "duplicate_conflict"),
        ]
        eid_b = results[0].event_id
        assert eid_b is not None and ledger.entry_data([eid_b])[eid_b][1] == second_first

    # -- offsets and atomicity ----------------------------------------------------------------------
    def test_offsets_are_stored_with_the_append(
        self, ledger: Ledger, store_url: str, demo: DemoChain
    ) -> None:
        small = SmallChain(demo.operator_key)
        ledger.append([small.register.raw], offsets={("sequencer", "verified", 0): 1})
        assert ledger.stored_offsets("sequencer") == {("verified", 0): 1}
        ledger.append(
            [small.extracted("A-ORE-1").raw],
            offsets={("sequencer", "verified", 0): 2, ("sequencer", "verified", 1): 7},
        )
        # a batch of rejections only, and an upstream rejection, move the offsets too
        ledger.append([b"not json"], offsets={("sequencer", "verified", 1): 8})
        ledger.record_rejections(
            [
                Incoming(
                    raw=b"\x00\xff",
                    source="material-events/3/3",
                    error=EventError(Reason.MALFORMED, "binary"),
                )
            ],
            offsets={("verifier", "material-events", 3): 4},
        )
        assert ledger.stored_offsets("sequencer") == {("verified", 0): 2, ("verified", 1): 8}
        assert ledger.stored_offsets("verifier") == {("material-events", 3): 4}
        assert ledger.stored_offsets("nobody") == {}
        assert [(r.reason, bytes(r.raw)) for r in rejections(ledger)] == [
            ("malformed", b"not json"),
            ("malformed", b"\x00\xff"),
        ]
        ledger.close()
        with self.reopen(store_url, demo) as again:
            assert again.stored_offsets("sequencer") == {("verified", 0): 2, ("verified", 1): 8}

    @pytest.mark.parametrize(
        "table",
        ["entries", "merkle_nodes", "batches", "edges", "facilities", "rejections", "parked", "offsets"],
    )
    def test_a_failed_append_stores_nothing_and_the_ledger_goes_on(
        self, ledger: Ledger, demo: DemoChain, table: str
    ) -> None:
        n_reg = len(demo.registry_events)
        assert statuses(ledger.append([e.raw for e in demo.good_events[: n_reg + 6]])) == ["appended"] * (
            n_reg + 6
        )
        small = SmallChain(demo.operator_key)
        orphan = small.processed("A-LI-9", parent="A-ORE-9")  # parks: its input never arrives
        batch: list[bytes | Incoming] = [
            small.register.raw,  # facilities + registry in memory
            small.extracted("A-ORE-1").raw,
            orphan.raw,
            *[e.raw for e in demo.chain_events[6:16]],  # batches, custody updates, edges
            Incoming(raw=b"{broken", source="material-events/0/77"),  # a rejection
        ]
        offsets = {("sequencer", "verified", 0): 99}
        before = dump_store(ledger)
        size, head = ledger.size, ledger.head_hash

        with fail_on_write(ledger.engine, table), pytest.raises(InjectedFault):
            ledger.append(batch, offsets=offsets, park=True)

        assert dump_store(ledger) == before
        assert (ledger.size, ledger.head_hash) == (size, head)
        assert SmallChain.FACILITY not in ledger.registry.facilities
        assert ledger.stored_offsets("sequencer") == {}
        # the same object appends the same batch afterwards, continuing the chain where it was
        results = ledger.append(batch, offsets=offsets, park=True)
        assert statuses(results) == ["appended", "appended", "parked", *["appended"] * 10, "rejected"]
        assert [r.seq for r in results if r.status == "appended"] == list(range(size, size + 12))
        assert ledger.stored_offsets("sequencer") == {("verified", 0): 99}
        assert ledger.parked_count() == 1
        assert [row.seq for row in entries(ledger)] == list(range(ledger.size))

    # -- children before parents -------------------------------------------------------------------
    def test_a_child_before_its_parent_is_parked_then_appended_after_it(
        self, ledger: Ledger, store_url: str, demo: DemoChain
    ) -> None:
        small = SmallChain(demo.operator_key)
        ledger.append([small.register.raw])
        parent = small.extracted("A-ORE-1")
        child = small.processed("A-LI-1", parent="A-ORE-1")
        size = ledger.size

        [parked] = ledger.append([child.raw], park=True)
        assert (parked.status, parked.reason) == ("parked", "unknown_input")
        assert ledger.decisions([child.event_id]) == {child.event_id: ("parked", None, None, None)}
        assert ledger.parked_count() == 1 and ledger.stats()["parked"] == 1
        assert ledger.size == size and ledger.batch("A-LI-1") is None
        ledger.close()

        with self.reopen(store_url, demo) as again:  # the parked event survives a restart
            results = again.append([parent.raw], park=True)
            assert (results[0].event_id, results[0].status, results[0].seq) == (
                parent.event_id,
                "appended",
                size,
            )
            decided = again.decisions([parent.event_id, child.event_id])
            assert decided[child.event_id] == ("appended", size + 1, None, None)
            assert [r.event_id for r in results if r.status == "appended"] == [
                parent.event_id,
                child.event_id,
            ]
            assert again.parked_count() == 0
            assert again.entry_data([child.event_id]) == {child.event_id: (size + 1, child.raw)}
            made = again.batch("A-LI-1")
            assert made is not None and made.event_id == child.event_id

    def test_child_and_parent_in_one_batch_give_one_result_each(
        self, ledger: Ledger, demo: DemoChain
    ) -> None:
        small = SmallChain(demo.operator_key)
        ledger.append([small.register.raw])
        parent = small.extracted("A-ORE-1")
        child = small.processed("A-LI-1", parent="A-ORE-1")
        size = ledger.size
        results = ledger.append([child.raw, parent.raw], park=True)
        # the contract of `append`: one result per item, in item order (the child's final outcome)
        assert [(r.event_id, r.status, r.seq) for r in results] == [
            (child.event_id, "appended", size + 1),
            (parent.event_id, "appended", size),
        ]
        assert ledger.parked_count() == 0

    def test_without_park_a_child_before_its_parent_is_rejected(
        self, ledger: Ledger, demo: DemoChain
    ) -> None:
        small = SmallChain(demo.operator_key)
        ledger.append([small.register.raw])
        child = small.processed("A-LI-1", parent="A-ORE-1")
        [res] = ledger.append([child.raw])
        assert (res.status, res.reason) == ("rejected", "unknown_input")
        assert ledger.parked_count() == 0

    def test_expired_parked_events_are_rejected_with_their_bytes(
        self, ledger: Ledger, demo: DemoChain
    ) -> None:
        small = SmallChain(demo.operator_key)
        ledger.append([small.register.raw])
        parent = small.extracted("A-ORE-1")
        child = small.processed("A-LI-1", parent="A-ORE-1")
        ledger.append([Incoming(raw=child.raw, source="material-events-verified/0/12")], park=True)

        assert ledger.expire_parked(timedelta(hours=1)) == []  # parked a moment ago: not expired
        assert ledger.parked_count() == 1
        [expired] = ledger.expire_parked(timedelta(0))
        assert (expired.event_id, expired.status, expired.reason) == (
            child.event_id,
            "rejected",
            "parents_timeout",
        )
        assert "A-ORE-1" in (expired.detail or "")
        [row] = rejections(ledger)
        assert (row.event_id, row.reason, bytes(row.raw), row.source) == (
            child.event_id,
            "parents_timeout",
            child.raw,
            "material-events-verified/0/12",
        )
        assert ledger.parked_count() == 0
        assert ledger.decisions([child.event_id])[child.event_id][:3] == ("rejected", None, "parents_timeout")
        # the parent arriving now no longer brings the expired child in
        size = ledger.size
        assert statuses(ledger.append([parent.raw], park=True)) == ["appended"]
        assert ledger.size == size + 1 and ledger.batch("A-LI-1") is None

    # -- queries ----------------------------------------------------------------------------------
    def test_provenance_of_the_final_packs_is_the_same_on_every_backend(
        self, loaded: Ledger, demo: DemoChain, reference_provenance: dict[str, Provenance]
    ) -> None:
        offline = nodes_from_events(
            [(decode(e.raw).event, e.event_id) for e in demo.good_events], loaded.registry
        )
        for pack in demo.final_packs:
            got = loaded.provenance(pack)
            assert got == reference_provenance[pack]  # bit for bit, floats included
            assert got.summary() == compute(pack, offline).summary()  # the offline verifier's answer
            assert got.missing_parents == []
        # numbers checked by hand from the demo data (mass balance through the cell line)
        p1 = loaded.provenance("US-PACK-001")
        assert p1.ancestors == 16
        assert p1.elements[Element.NI].origins == {("mined", "ID", "", "CN", True): 6571.0}
        assert p1.elements[Element.MN].origins == {("mined", "MX", "", "US", False): 800.0}
        assert p1.elements[Element.GRAPHITE].origins == {("mined", "CA", "", "US", False): 12428.0}
        # cell line li in: 1150 from the cathode lot (AU spodumene refined in the US) + 374 from 2000 of
        # the 10000 kg Chilean carbonate (1870 li); the pack's 1057 kg split in that ratio
        assert p1.elements[Element.LI].origins == {
            ("mined", "CL", "", "CL", False): pytest.approx(1057 * 374 / 1524, rel=1e-12),
            ("mined", "AU", "", "US", False): pytest.approx(1057 * 1150 / 1524, rel=1e-12),
        }
        p2 = loaded.provenance("US-PACK-002")
        assert {o[0] for o in p2.elements[Element.LI].origins} == {"mined", "recycled"}
        with pytest.raises(StoreError, match="not in the ledger"):
            loaded.provenance("NO-SUCH-BATCH")

    @pytest.mark.parametrize(
        ("start", "direction"),
        [("US-PACK-001", "up"), ("US-PACK-002", "up"), ("AU-SPOD-001", "down"), ("CA-BM-001", "down")],
    )
    def test_lineage_walks_up_and_down_to_the_depth_asked(
        self, loaded: Ledger, demo: DemoChain, start: str, direction: str
    ) -> None:
        edges = demo_edges(demo)
        kg = {(p, c): k for p, c, k in edges}
        for depth in (1, 2, 3, 50):
            got = loaded.lineage(start, direction=direction, depth=depth)
            want = expected_lineage(edges, start, direction, depth)
            assert {(e["parent"], e["child"], e["depth"]) for e in got} == want
            assert len(got) == len(want)  # each edge once, at its nearest depth
            assert [e["depth"] for e in got] == sorted(e["depth"] for e in got)  # nearest first
            assert all(Decimal(e["kg"]) == kg[(e["parent"], e["child"])] for e in got)
        assert len(want) > 3  # depth 50 reached past the first hops

    def test_lineage_rows_carry_both_ends_and_refuse_unknowns(self, loaded: Ledger) -> None:
        [edge] = loaded.lineage("US-PACK-001", direction="up", depth=1)
        assert edge == {
            "depth": 1,
            "parent": "US-MOD-001",
            "child": "US-PACK-001",
            "kg": edge["kg"],
            "parent_material": "battery_module",
            "parent_facility": "pack-us-michigan",
            "parent_country": "US",
            "child_material": "ev_battery_pack",
            "child_facility": "pack-us-michigan",
            "child_country": "US",
        }
        assert Decimal(edge["kg"]) == 70000
        assert loaded.lineage("AU-SPOD-001", direction="up") == []  # a mined batch has no parents
        with pytest.raises(StoreError, match="not in the ledger"):
            loaded.lineage("NO-SUCH-BATCH")
        with pytest.raises(ValueError, match="up or down"):
            loaded.lineage("US-PACK-001", direction="sideways")

    def test_decisions_by_event_id_and_by_source(self, loaded: Ledger, demo: DemoChain) -> None:
        small = SmallChain(demo.operator_key)
        loaded.append([small.register.raw])
        child = small.processed("A-LI-1", parent="A-ORE-404")
        loaded.append([child.raw], park=True)
        (_, overdrawn_raw, _) = next(b for b in demo.bad_events if b[2] == "overdrawn")
        overdrawn_id = decode(overdrawn_raw).event_id
        loaded.append([Incoming(raw=overdrawn_raw, source="material-events/2/40")])
        first = demo.chain_events[0]
        unknown = "0" * 64

        by_id = loaded.decisions([first.event_id, overdrawn_id, child.event_id, unknown])
        assert set(by_id) == {first.event_id, overdrawn_id, child.event_id}
        assert by_id[first.event_id] == ("appended", len(demo.registry_events) + 1, None, None)
        assert by_id[overdrawn_id][:3] == ("rejected", None, "overdrawn")
        assert by_id[child.event_id] == ("parked", None, None, None)
        by_source = loaded.decisions(sources=["material-events/2/40", "material-events/2/41"])
        assert list(by_source) == ["material-events/2/40"]
        assert by_source["material-events/2/40"][:3] == ("rejected", None, "overdrawn")
        assert loaded.decisions() == {}

    def test_stats_count_what_is_stored(self, loaded: Ledger, demo: DemoChain) -> None:
        loaded.append([raw for _, raw, _ in demo.bad_events])
        made = {o.batch_id for e in demo.chain_events for o in getattr(decode(e.raw).event, "outputs", ())}
        stats = loaded.stats()
        assert stats == {
            "origin": ORIGIN,
            "entries": len(demo.good_events) + 1,
            "head": loaded.head_hash.hex(),
            "batches": len(made),
            "parked": 0,
            "facilities": len(demo.facilities) + 1,
            "rejections": {r: n for r, n in demo.expected_rejections.items() if r != "duplicate"},
            "latest_checkpoint_size": None,
        }
        loaded.make_checkpoint()
        assert loaded.stats()["latest_checkpoint_size"] == loaded.size

    def test_stored_values_round_trip_exactly(self, loaded: Ledger, demo: DemoChain) -> None:
        # booleans, exact decimals, aware UTC datetimes and bytes read back as written
        nickel = loaded.batch("CN-NISO4-001")
        assert nickel is not None
        producing = decode(loaded.entry_data([nickel.event_id])[nickel.event_id][1]).event
        assert (nickel.feoc, nickel.pfe, nickel.country) == (True, True, "CN")
        assert nickel.kg == Decimal("85000") and nickel.contained[Element.NI] == Decimal("18900")
        assert nickel.value_usd == Decimal("510000")
        assert nickel.time == producing.time and nickel.time.utcoffset() == timedelta(0)
        spod = loaded.batch("AU-SPOD-001")
        assert spod is not None
        assert (spod.feoc, spod.pfe) == (False, False)
        assert spod.consumed_kg == Decimal("100000") and spod.available_kg == 0
        assert spod.time == datetime(2025, 1, 6, 6, 0, tzinfo=UTC)
        row = entries(loaded)[1]
        assert isinstance(_plain(row.data), bytes) and bytes(row.data) == demo.good_events[0].raw
        stored = row.time.replace(tzinfo=UTC) if row.time.tzinfo is None else row.time  # SQLite: naive UTC
        assert stored == decode(bytes(row.data)).event.time

    def test_checkpoints_are_signed_tree_heads(self, loaded: Ledger, store_url: str, demo: DemoChain) -> None:
        assert loaded.latest_checkpoint() is None
        note = loaded.make_checkpoint()
        assert note is not None
        body = open_note(note, ORIGIN, demo.operator_key.public_key())
        cp = Checkpoint.parse(body)
        assert (cp.origin, cp.size, cp.root_hash) == (ORIGIN, loaded.size, loaded.head().root_hash)
        assert loaded.latest_checkpoint() == note
        assert loaded.make_checkpoint() is None  # the latest checkpoint already covers this size
        small = SmallChain(demo.operator_key)
        loaded.append([small.register.raw])
        newer = loaded.make_checkpoint()
        assert (
            newer is not None
            and Checkpoint.parse(open_note(newer, ORIGIN, demo.operator_key.public_key())).size == cp.size + 1
        )
        loaded.close()
        with Ledger(store_url) as reader:  # no operator key: may read, may not sign
            assert reader.latest_checkpoint() == newer
            with pytest.raises(StoreError, match="operator key"):
                reader.make_checkpoint()

    def test_head_root_is_the_merkle_root_of_the_entries(self, ledger: Ledger, demo: DemoChain) -> None:
        # uneven batches, so the stored tree is extended across every kind of subtree boundary
        events = demo.good_events
        i, n = 0, 1
        while i < len(events):
            ledger.append([e.raw for e in events[i : i + n]])
            i, n = i + n, n + 1
            rows = entries(ledger)
            leaves = [merkle.leaf_hash(bytes(r.data)) for r in rows]
            assert [bytes(r.leaf_hash) for r in rows] == leaves
            assert ledger.head().root_hash == merkle.root_hash(leaves)
            assert ledger.head().size == len(rows) == ledger.size
            link = chain.GENESIS
            for r, leaf in zip(rows, leaves, strict=True):
                link = chain.entry_hash(link, leaf)
                assert bytes(r.entry_hash) == link
            assert ledger.head().entry_hash == link
        assert ledger.size == len(events) + 1

    def test_verify_names_the_first_tampered_entry(self, loaded: Ledger) -> None:
        from ledger.core import verify_ledger

        assert verify_ledger(loaded, signatures=False).ok
        [victim] = [r for r in entries(loaded) if r.seq == 20]
        doctored = json.loads(bytes(victim.data))
        doctored["time"] = "2031-01-01T00:00:00Z"
        with loaded.engine.begin() as conn:
            conn.execute(
                update(ENTRIES).where(ENTRIES.c.seq == 20).values(data=json.dumps(doctored).encode())
            )
        report = verify_ledger(loaded, signatures=False)
        assert not report.ok
        assert report.first_error is not None and report.first_error[0] == 20

    # -- one writer per store ----------------------------------------------------------------------
    def test_two_writers_on_one_store_lose_nothing(
        self, ledger: Ledger, store_url: str, demo: DemoChain
    ) -> None:
        # two sequencers (their own Ledger objects, engines and threads) append to one store at once:
        # the writer lock serialises their transactions and each follows the other's head
        import threading

        from ledger.core import verify_ledger

        small = SmallChain(demo.operator_key)
        assert statuses(ledger.append([small.register.raw])) == ["appended"]
        other = Ledger(store_url)
        batches = {
            name: [[small.extracted(f"{name}-{i}-{j}").raw for j in range(3)] for i in range(12)]
            for name in ("A", "B")
        }
        results: dict[str, list[AppendResult]] = {"A": [], "B": []}
        errors: list[BaseException] = []

        def writer(name: str, led: Ledger) -> None:
            try:
                for batch in batches[name]:
                    results[name].extend(led.append(batch))
            except BaseException as exc:  # reported by the assertion below
                errors.append(exc)

        threads = [threading.Thread(target=writer, args=(n, led)) for n, led in (("A", ledger), ("B", other))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        other.close()
        assert not errors, errors
        assert statuses(results["A"] + results["B"]) == ["appended"] * 72
        seqs = sorted(r.seq for r in results["A"] + results["B"] if r.seq is not None)
        assert seqs == list(range(2, 74))
        assert count(ledger, REJECTIONS) == 0
        assert verify_ledger(Ledger(store_url), record=False).ok

    def test_a_second_writer_waits_then_refuses_naming_the_holder(
        self, ledger: Ledger, store_url: str, demo: DemoChain
    ) -> None:
        import threading

        from ledger.store import write_transaction

        small = SmallChain(demo.operator_key)
        held, release = threading.Event(), threading.Event()

        def holder() -> None:  # a writer in the middle of a long transaction
            with write_transaction(ledger.engine, ledger.url):
                held.set()
                release.wait(60)

        t = threading.Thread(target=holder)
        t.start()
        try:
            assert held.wait(30)
            second = Ledger(store_url)
            second.writer_wait_s = 0.3
            with pytest.raises(StoreError) as err:
                second.append([small.register.raw])
            message = err.value.diagnostics()
            assert "has another writer" in message and "holds the write lock (waited 0.3 s)" in message
            assert "pid" in message and "\n" not in message
            assert count(ledger, ENTRIES) == 1  # nothing of the refused writer's batch
        finally:
            release.set()
            t.join(30)
        assert statuses(second.append([small.register.raw])) == ["appended"]
        second.close()

    # -- read-only stores ----------------------------------------------------------------------------
    @pytest.fixture
    def read_only_url(self, store_url: str) -> str:
        raise NotImplementedError("a backend's test class provides read_only_url: the store, read-only")

    def test_a_read_only_store_is_read_and_never_written(
        self, loaded: Ledger, read_only_url: str, demo: DemoChain
    ) -> None:
        from ledger.core import verify_ledger

        loaded.make_checkpoint()
        before = dump_store(loaded)
        ro = Ledger(read_only_url)
        assert ro.size == loaded.size
        assert ro.provenance("US-PACK-002").ancestors == loaded.provenance("US-PACK-002").ancestors
        assert ro.lineage("US-PACK-002", direction="up", depth=2)
        assert ro.stats()["entries"] == loaded.size
        report = verify_ledger(ro)  # verifies; its mark cannot be recorded and it says why
        assert report.ok, report.errors
        assert any("verified mark not recorded" in n and "read-only" in n for n in report.notes), report.notes
        small = SmallChain(demo.operator_key)
        with pytest.raises(StoreError) as err:
            ro.append([small.register.raw])
        message = err.value.diagnostics()
        assert "is read-only" in message and "\n" not in message and len(message) < 400, message
        ro.close()
        assert dump_store(loaded) == before  # nothing written by any of it
