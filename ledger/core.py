"""The Ledger: open a store by URL, append signed events, answer queries.

    >>> led = Ledger.init("sqlite:///ledger.db", operator_key=key, origin="example.org/ledger")
    >>> led.append([signed_bytes, ...])          # -> [AppendResult(...), ...]
    >>> led.provenance("PACK-0001")              # -> Provenance
    >>> led.verify()                              # -> VerifyReport

One `append` call is one store transaction: entries, Merkle nodes, batches, edges, registry view,
rejections, parked events and the consumed Kafka offsets commit together or not at all. A Ledger object
is the single writer of its store (the sequencer); readers may open the same URL concurrently.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import MetaData, String, Table, func, inspect, literal, select, text
from sqlalchemy.engine import Connection, Engine

from ledger import chain, tree
from ledger.checkpoint import Checkpoint, parse_vkey, sign_note, vkey
from ledger.provenance import (
    BatchNode,
    ElementSplit,
    FeedInfo,
    Provenance,
    compute,
    decode_origins,
    dumps_sorted,
    encode_origins,
)
from ledger.registry import Registry
from ledger.rules import BatchState, Edge, StateView, check_and_plan, input_ids
from ledger.store import (
    BATCHES,
    CHECKPOINTS,
    EDGES,
    ENTRIES,
    FACILITIES,
    OFFSETS,
    PARKED,
    REJECTIONS,
    WRITER_WAIT_S,
    StoreError,
    as_store_error,
    bulk_insert,
    bulk_update,
    chunks,
    create_schema,
    db_time_of,
    fetch_nodes,
    get_meta,
    insert_nodes,
    make_engine,
    normalise_url,
    now,
    placeholder,
    redact,
    select_in,
    set_meta,
    sqlite_path,
    write_transaction,
)
from schemas.events import (
    ELEMENTS,
    REGISTRY_FACILITY_ID,
    REGISTRY_KINDS,
    Attestation,
    FacilityRegistered,
    Kind,
    PublicKeyInfo,
    event_to_json_obj,
)
from schemas.reasons import EventError, Reason
from schemas.signing import DecodedEvent, decode, key_id, public_key_b64, sign_object

Status = Literal["appended", "duplicate", "rejected", "parked"]
#: A rejection as the store recorded it: (original bytes, source, reason, detail, event id).
RecordedRejection = tuple[bytes, str, str, str, str | None]

# Children before parents: an event whose inputs are not in the ledger yet (or whose custody change, a
# shipment or receipt from another partition, has not arrived) waits in the parked table, at most this
# many events (bounded memory and storage) and at most PARK_MAX_AGE (see expire_parked).
PARK_MAX_EVENTS = 100_000
FACILITY_WAIT = "facility:"  # parked-index key prefix: waiting for a facility's registration or key
# every waiting copy also waits for its own event id: once one copy is appended, the others (other
# signatures, other sources) are decided at once (a duplicate, or a conflict naming the winner)
EVENT_WAIT = "event:"
PARK_MAX_AGE = timedelta(seconds=30)


@dataclass(frozen=True, slots=True)
class AppendResult:
    event_id: str | None
    status: Status
    seq: int | None = None
    reason: str | None = None
    detail: str | None = None
    #: where the decided message came from and, for a rejection, its original bytes: set on the results
    #: of events released from (or expired in) the parked table, whose caller no longer holds them
    source: str | None = field(default=None, compare=False)
    raw: bytes | None = field(default=None, compare=False, repr=False)


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """No cyclic garbage collection while a batch is decoded and appended (then as before).

    An append batch allocates tens of thousands of short-lived containers (models, rows, states) that
    all stay alive until it commits: every young collection in between promotes them, and each promotion
    brings the next full collection of the whole heap nearer. Measured on the append path that was
    30-50% of its CPU. With collection paused, they are freed by reference counting when the batch ends
    and never promoted; the few cycles a batch may make are collected at the next collection after it.
    """
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def park_id_of(source: str, signed: bytes) -> str:
    """Key of one waiting copy: two messages with one event id (other signatures) are two rows."""
    return hashlib.sha256(source.encode("utf-8", "replace") + b"\x00" + signed).hexdigest()


@dataclass(slots=True)
class Incoming:
    """An event on its way in. `raw` is what is kept if it is rejected (the original bytes)."""

    raw: bytes
    decoded: DecodedEvent | None = None
    signature_checked: bool = False
    source: str = "api"
    error: EventError | None = None  # decided upstream (verify stage): record the rejection only
    parked_at: datetime | None = None  # set when it comes back from the parked table
    park_id: str | None = None  # its row in the parked table, when it comes back from there


@dataclass(frozen=True, slots=True)
class Head:
    size: int
    entry_hash: bytes
    root_hash: bytes


class _Overlay(StateView):
    """Store rows plus the uncommitted changes of the current append batch."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.batches: dict[str, BatchState | None] = {}
        self.new_events: dict[str, bytes] = {}
        self.new_seqs: dict[str, int] = {}
        self.stored_events: dict[str, bytes | None] = {}

    def prefetch(self, batch_ids: Iterable[str], event_ids: Iterable[str]) -> None:
        conn = self.conn
        want = sorted({b for b in batch_ids if b not in self.batches})
        if want:
            # straight through the driver (store.select_in); only the time column needs SQLAlchemy's
            # conversion (SQLite keeps it as text), the rest row_to_batch converts itself
            time_of = BATCHES.c.time.type.dialect_impl(conn.dialect).result_processor(conn.dialect, None)
            for row in select_in(conn, _SELECT_BATCHES, want):
                self.batches[row.batch_id] = row_to_batch(row, time_of)
            for b in want:
                self.batches.setdefault(b, None)
        ev_want = sorted({e for e in event_ids if e not in self.stored_events})
        if ev_want:
            for row in select_in(conn, "SELECT event_id, data FROM entries WHERE event_id IN", ev_want):
                self.stored_events[row[0]] = bytes(row[1])
            for e in ev_want:
                self.stored_events.setdefault(e, None)

    def batch(self, batch_id: str) -> BatchState | None:
        if batch_id not in self.batches:
            self.prefetch([batch_id], [])
        return self.batches[batch_id]

    def event_bytes(self, event_id: str) -> bytes | None:
        if event_id in self.new_events:
            return self.new_events[event_id]
        if event_id not in self.stored_events:
            self.prefetch([], [event_id])
        return self.stored_events[event_id]


def row_to_batch(row: Any, time_of: Callable[[Any], Any] | None = None) -> BatchState:
    """A batches row as state; `time_of` converts the time column of a row read through the driver."""
    b = BatchState(
        batch_id=row.batch_id,
        event_id=row.event_id,
        seq=row.seq,
        kind=Kind(row.kind),
        facility_id=row.facility_id,
        country=row.country,
        feoc=bool(row.feoc),
        pfe=bool(row.pfe),
        time=_aware(row.time if time_of is None else time_of(row.time)),
        material=row.material,
        kg=Decimal(row.kg),
        contained={el: Decimal(getattr(row, el.value)) for el in ELEMENTS},
        value_usd=None if row.value_usd is None else Decimal(row.value_usd),
        consumed_kg=Decimal(row.consumed_kg),
        extra=json.loads(row.extra),
    )
    b.load_custody(row.custody)
    b.mass, b.value = decode_origins(row.origins)
    return b


def _aware(t: datetime) -> datetime:
    return t.astimezone(UTC) if t.tzinfo is not None else t.replace(tzinfo=UTC)


ENTRY_COLUMNS = (
    "seq",
    "event_id",
    "kind",
    "facility_id",
    "time",
    "data",
    "leaf_hash",
    "entry_hash",
    "appended_at",
)
BATCH_COLUMNS = (
    "batch_id",
    "seq",
    "event_id",
    "kind",
    "facility_id",
    "country",
    "feoc",
    "pfe",
    "time",
    "material",
    "kg",
    "consumed_kg",
    "value_usd",
    "custody",
    "extra",
    "origins",
    *(el.value for el in ELEMENTS),
)


_SELECT_BATCHES = f"SELECT {', '.join(c.name for c in BATCHES.columns)} FROM batches WHERE batch_id IN"


def _batch_row(
    to_db: Callable[[datetime], Any], times_db: Mapping[datetime, Any], b: BatchState
) -> tuple[Any, ...]:
    contained = b.contained
    t = times_db.get(b.time)
    return (
        b.batch_id,
        b.seq,
        b.event_id,
        b.kind.value,
        b.facility_id,
        b.country,
        b.feoc,
        b.pfe,
        to_db(b.time) if t is None else t,
        b.material,
        str(b.kg),
        str(b.consumed_kg),
        None if b.value_usd is None else str(b.value_usd),
        b.custody_json(),
        dumps_sorted(b.extra) if b.extra else "{}",
        encode_origins(b.mass, b.value),
        *[str(contained[el]) for el in ELEMENTS],
    )


class Ledger:
    """A ledger store opened by URL. Not thread-safe: one writer object per store."""

    def __init__(
        self, url: str, *, operator_key: Ed25519PrivateKey | None = None, _engine: Engine | None = None
    ) -> None:
        self.url = normalise_url(url)
        path = sqlite_path(self.url)
        if _engine is None and path is not None and not os.path.exists(path):
            # SQLite would create an empty file: say what is wrong instead
            raise StoreError(f"no ledger at {path}: check --store, or run `batteryledger init`")
        self.engine = _engine or make_engine(self.url)
        self.operator_key = operator_key
        try:
            with self.engine.connect() as conn:
                origin = get_meta(conn, "origin")
                vkey_text = get_meta(conn, "operator_vkey") if origin is not None else None
        except Exception as exc:
            err = as_store_error(url, exc)
            why = str(err)
            if err is None or "no such table" in why or ("relation" in why and "does not exist" in why):
                err = StoreError(f"no ledger at {redact(url)}: run `batteryledger init` first")
            raise err from exc
        if origin is None:
            raise StoreError(f"no ledger at {redact(url)}: run `batteryledger init` first")
        self.origin: str = origin
        self.operator_vkey: str = vkey_text or ""
        self.operator_public_key: Ed25519PublicKey = parse_vkey(self.operator_vkey)[1]
        if operator_key is not None and public_key_b64(operator_key.public_key()) != public_key_b64(
            self.operator_public_key
        ):
            raise StoreError("the operator key given is not this ledger's operator key")
        self.registry = Registry()
        self.writer_wait_s = WRITER_WAIT_S  # one writer per store: see store.write_transaction
        self._parked_index: dict[str, set[str]] = {}  # what is waited for -> park ids waiting
        self._recheck_parked = False  # set when the store moved under this object (see sync)
        self._load()

    # -- lifecycle ------------------------------------------------------------------------------
    @classmethod
    def init(
        cls,
        url: str,
        *,
        operator_key: Ed25519PrivateKey,
        origin: str,
        legal_entity: str = "Ledger operator",
        country: str = "US",
        time: datetime | None = None,
    ) -> Ledger:
        """Create the schema and entry 0: the registry authority registering itself with its key."""
        engine = make_engine(normalise_url(url))
        create_schema(engine)
        with engine.begin() as conn:
            if get_meta(conn, "origin") is not None:
                raise StoreError(f"a ledger already exists at {url}")
            set_meta(
                conn,
                {"origin": origin, "operator_vkey": vkey(origin, operator_key.public_key()), "schema": "1"},
            )
        led = cls(url, operator_key=operator_key, _engine=engine)  # same engine: ":memory:" stays
        when = time or datetime(2000, 1, 1, tzinfo=UTC)
        boot = FacilityRegistered(
            spec="batteryledger/1",
            kind=Kind.FACILITY_REGISTERED,
            facility_id=REGISTRY_FACILITY_ID,
            time=when,
            subject_facility_id=REGISTRY_FACILITY_ID,
            legal_entity=legal_entity,
            country=country,
            roles=[Kind.FACILITY_REGISTERED],
            attestation=Attestation(feoc=False, as_of=when),
            key=PublicKeyInfo(
                key_id=key_id(operator_key.public_key()),
                public_key=public_key_b64(operator_key.public_key()),
                valid_from=when,
            ),
        )
        raw, _ = sign_object(event_to_json_obj(boot), operator_key)
        [res] = led.append([raw])
        if res.status != "appended":
            raise StoreError(f"could not write the genesis registry entry: {res.reason} {res.detail}")
        return led

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _load(self) -> None:
        """Rebuild in-memory state: head, registry (from registry entries), parked index.

        The registry is built aside and swapped in whole: whoever holds `self.registry` (the verify
        stage reads it between refreshes) sees the old registry or the new one, never a half-filled one."""
        registry = Registry()
        with self.engine.connect() as conn:
            last = conn.execute(
                select(ENTRIES.c.seq, ENTRIES.c.entry_hash).order_by(ENTRIES.c.seq.desc()).limit(1)
            ).first()
            self.size = 0 if last is None else last.seq + 1
            self.head_hash = chain.GENESIS if last is None else bytes(last.entry_hash)
            reg_kinds = [
                k.value
                for k in (
                    Kind.FACILITY_REGISTERED,
                    Kind.FACILITY_ATTESTED,
                    Kind.KEY_ROTATED,
                    Kind.KEY_REVOKED,
                )
            ]
            rows = conn.execute(
                select(ENTRIES.c.event_id, ENTRIES.c.data)
                .where(ENTRIES.c.kind.in_(reg_kinds))
                .order_by(ENTRIES.c.seq)
            )
            self.load_errors: list[str] = []
            for row in rows:
                try:
                    d = decode(bytes(row.data))
                except EventError as exc:  # a tampered registry entry: open anyway so `verify` can say so
                    self.load_errors.append(f"registry entry {row.event_id}: {exc.detail}")
                    continue
                registry.apply(d.event, row.event_id)
            self.registry = registry
            self._parked_index = {}
            self._parked_legacy = "park_id" not in {c["name"] for c in inspect(conn).get_columns("parked")}
            if not self._parked_legacy:
                for row in conn.execute(select(PARKED.c.park_id, PARKED.c.missing)):
                    for b in json.loads(row.missing):
                        self._parked_index.setdefault(b, set()).add(row.park_id)
        self._recheck_parked = bool(self._parked_index)

    def _upgrade_parked(self) -> None:
        """A store made before parked copies had their own key (park_id): rebuild its parked table once,
        keeping every waiting event (only a writer does this, on its first append)."""
        with self.engine.begin() as conn:
            old = Table("parked", MetaData(), autoload_with=conn)
            rows = [dict(r._mapping) for r in conn.execute(select(old))]
            old.drop(conn)
            PARKED.create(conn)
            names = [c.name for c in PARKED.columns]
            for r in rows:
                r["park_id"] = park_id_of(str(r["source"]), bytes(r["data"]))
                conn.execute(PARKED.insert().values(**{k: r[k] for k in names if k in r}))
        self._load()

    def sync(self) -> bool:
        """Reload head, registry and parked index if another process appended to the store since.

        One indexed query. True when it reloaded (a facility registered with the CLI while a worker runs
        becomes known to that worker's sequencer here, and events waiting for it are retried). `append`
        does the same under the writer lock, so a writer need not call this before appending.
        """
        with self.engine.connect() as conn:
            return self._follow_head(conn)

    # -- append ---------------------------------------------------------------------------------
    def append(
        self,
        items: Sequence[bytes | Incoming],
        *,
        offsets: Mapping[tuple[str, str, int], int] | None = None,
        park: bool = False,
    ) -> list[AppendResult]:
        """Append a batch of signed events in one transaction.

        Returns one result per item, in order, followed by one result per parked event that this batch
        released (children whose parents just arrived), in the order they were decided.

        `offsets` maps (consumer, topic, partition) to the next offset to consume and is stored in the
        same transaction. With `park`, an event whose inputs are unknown waits (see PARK_MAX_*).
        """
        incoming = [it if isinstance(it, Incoming) else Incoming(raw=it) for it in items]
        if self._parked_legacy:
            self._upgrade_parked()
        try:
            with paused_gc(), write_transaction(self.engine, self.url, self.writer_wait_s) as conn:
                self._follow_head(conn)
                results = self._append_in(conn, incoming, park)
                if offsets:
                    self._store_offsets(conn, offsets)
        except Exception as exc:
            with contextlib.suppress(Exception):  # an unreachable store: the error below says so
                self._load()  # the in-memory registry and head may have moved: rebuild from the store
            err = as_store_error(self.url, exc)  # disk full, read-only, unreachable: one line
            if err is None:
                raise
            raise err from exc
        return results

    def _follow_head(self, conn: Connection) -> bool:
        """If another writer appended since we last looked, reload our state (True when it did)."""
        last = conn.execute(
            select(ENTRIES.c.seq, ENTRIES.c.entry_hash).order_by(ENTRIES.c.seq.desc()).limit(1)
        ).first()
        size = 0 if last is None else int(last.seq) + 1
        head = chain.GENESIS if last is None else bytes(last.entry_hash)
        if size == self.size and head == self.head_hash:
            return False
        self._load()
        return True

    def _append_in(self, conn: Connection, incoming: list[Incoming], park: bool) -> list[AppendResult]:
        ov = _Overlay(conn)
        # 1. decode what the verify stage did not decode (bytes from the CLI, tests, the API)
        for it in incoming:
            if it.decoded is None and it.error is None:
                try:
                    it.decoded = decode(it.raw)
                except EventError as exc:
                    it.error = exc
                except Exception as exc:  # a bug costs this event, never the rest of the batch
                    it.error = EventError(Reason.INTERNAL_ERROR, f"decode: {type(exc).__name__}: {exc}")
        # 2. one round trip for every batch and event id this append will look at
        bids: set[str] = set()
        eids: set[str] = set()
        for it in incoming:
            d0 = it.decoded
            if d0 is not None:
                eids.add(d0.event_id)
                bids.update(input_ids(d0))
                fields = d0.event.__dict__  # a pydantic model's fields (getattr with a default is slow)
                outs = fields.get("outputs")
                if outs:
                    bids.update(o.batch_id for o in outs)
                corrects = fields.get("corrects")
                if corrects:
                    eids.add(corrects)
        ov.prefetch(bids, eids)

        # one result per item, in item order (an item parked then appended in this call reports
        # "appended"); events unparked from earlier calls report after the items
        slots: list[AppendResult | None] = [None] * len(incoming)
        unparked: list[AppendResult] = []
        parked_slot: dict[str, int] = {}  # park id of an item parked by this call -> its item index
        entry_rows: list[tuple[Any, ...]] = []
        leaves: list[bytes] = []
        new_batches: dict[str, BatchState] = {}
        touched: dict[str, BatchState] = {}
        edges: list[Edge] = []
        rejections: list[dict[str, Any]] = []
        facilities_changed: set[str] = set()
        parked_new: dict[str, dict[str, Any]] = {}
        parked_done: set[str] = set()
        seq = self.size
        prev = self.head_hash
        ts = now()
        to_db = db_time_of(conn)
        ts_db = to_db(ts)
        times_db: dict[datetime, Any] = {}  # event time -> its driver form, made once per event
        waiting_on = self._parked_index  # what is waited for -> park ids (mutated in place below)
        registry = self.registry
        leaf_of, entry_hash = chain.leaf_of, chain.entry_hash

        queue: list[tuple[int | None, Incoming]] = list(enumerate(incoming))
        if self._recheck_parked:
            # the store moved under this object (another process appended): whatever waits for a
            # facility or batch that is there now tries again
            self._recheck_parked = False
            waits = list(self._parked_index)
            ov.prefetch(
                [w for w in waits if not w.startswith((FACILITY_WAIT, EVENT_WAIT))],
                [w[len(EVENT_WAIT) :] for w in waits if w.startswith(EVENT_WAIT)],
            )
            for w in sorted(waits):
                if w.startswith(FACILITY_WAIT):
                    there = w[len(FACILITY_WAIT) :] in self.registry.facilities
                elif w.startswith(EVENT_WAIT):
                    there = ov.event_bytes(w[len(EVENT_WAIT) :]) is not None
                else:
                    there = ov.batch(w) is not None
                if there:
                    for waiting in sorted(self._parked_index.pop(w, set())):
                        queue.append((None, self._unpark(conn, waiting, parked_new)))

        def emit(slot: int | None, it: Incoming, res: AppendResult) -> None:
            if it.park_id is not None and res.status != "parked":
                parked_done.add(it.park_id)  # this copy is decided: its parked row goes
            if slot is None:
                if res.status == "parked":
                    return  # released, still waiting: nothing new to report
                # released from the parked table: the caller holds neither its bytes nor its source
                res = replace(res, source=it.source, raw=it.raw if res.status == "rejected" else None)
                unparked.append(res)
            else:
                slots[slot] = res

        def release(key: str) -> None:
            """Events waiting for `key` try again (after this one, in park id order)."""
            for waiting in sorted(waiting_on.pop(key, ())):
                queue.append((parked_slot.pop(waiting, None), self._unpark(conn, waiting, parked_new)))

        i = 0
        while i < len(queue):
            slot, it = queue[i]
            i += 1
            d = it.decoded
            if d is None:
                err = it.error or EventError(Reason.INTERNAL_ERROR, "event was neither decoded nor rejected")
                rejections.append(self._rejection(None, err, it, ts))
                emit(slot, it, AppendResult(None, "rejected", reason=err.reason.value, detail=err.detail))
                continue
            if it.error is not None:
                rejections.append(self._rejection(d.event_id, it.error, it, ts))
                emit(
                    slot,
                    it,
                    AppendResult(
                        d.event_id, "rejected", reason=it.error.reason.value, detail=it.error.detail
                    ),
                )
                continue
            # 3. same event id again: a no-op when the bytes are equal, a conflict otherwise
            event_id = d.event_id
            existing = ov.event_bytes(event_id)
            if existing is not None:
                if existing == d.signed:
                    emit(slot, it, AppendResult(event_id, "duplicate"))
                else:
                    # two copies of one event (another signature): the first that passed every check
                    # won; this one is decided under its own source, never dropped
                    err = EventError(
                        Reason.DUPLICATE_CONFLICT,
                        f"event {event_id} is already in the ledger with a different signature "
                        f"({self._winner(conn, ov, event_id)}); this copy is signed with key {d.key_id}",
                    )
                    rejections.append(self._rejection(event_id, err, it, ts))
                    emit(
                        slot,
                        it,
                        AppendResult(event_id, "rejected", reason=err.reason.value, detail=err.detail),
                    )
                continue
            # 4. identity, then the append rules
            try:
                registry.authorize(d, check_signature=not it.signature_checked)
                outcome = check_and_plan(d, ov, registry, seq)
            except EventError as exc:
                # children before parents: wait for the missing input batches, or for the custody
                # change (a shipment or receipt from another partition) that has not arrived yet
                if exc.reason == Reason.UNKNOWN_INPUT:
                    missing = [bid for bid in input_ids(d) if ov.batch(bid) is None]
                elif exc.reason == Reason.NOT_CUSTODIAN:
                    missing = list(input_ids(d))
                elif exc.reason in (Reason.UNKNOWN_FACILITY, Reason.UNKNOWN_KEY):
                    # its registration (or key rotation) may still be on its way on another partition
                    missing = [FACILITY_WAIT + d.facility_id]
                else:
                    missing = []
                if park and missing and (it.park_id is not None or self._park_room()):
                    pid = it.park_id or park_id_of(it.source, d.signed)
                    parked_new[pid] = {
                        "park_id": pid,
                        "event_id": event_id,
                        "data": d.signed,
                        "raw": it.raw,
                        "missing": json.dumps(sorted({*missing, EVENT_WAIT + event_id})),
                        "reason": exc.reason.value,
                        "detail": exc.detail[:2000],
                        "source": it.source,
                        "parked_at": it.parked_at or ts,  # waiting time counts from the first park
                    }
                    for bid in (*missing, EVENT_WAIT + event_id):
                        waiting_on.setdefault(bid, set()).add(pid)
                    parked_done.discard(pid)
                    if slot is not None:
                        parked_slot[pid] = slot
                    emit(
                        slot, it, AppendResult(event_id, "parked", reason=exc.reason.value, detail=exc.detail)
                    )
                    continue
                rejections.append(self._rejection(event_id, exc, it, ts))
                emit(slot, it, AppendResult(event_id, "rejected", reason=exc.reason.value, detail=exc.detail))
                continue
            except Exception as exc:
                err = EventError(Reason.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")
                rejections.append(self._rejection(event_id, err, it, ts))
                emit(slot, it, AppendResult(event_id, "rejected", reason=err.reason.value, detail=err.detail))
                continue
            # 5. accepted: chain it, apply its changes to the overlay and the registry
            signed = d.signed
            ev = d.event
            kind = d.kind
            leaf = leaf_of(signed)
            prev = entry_hash(prev, leaf)
            when = ev.time
            when_db = times_db[when] = to_db(when)  # its batches' rows reuse it (_batch_row)
            entry_rows.append((seq, event_id, kind.value, ev.facility_id, when_db, signed, leaf, prev, ts_db))
            leaves.append(leaf)
            ov.new_events[event_id] = signed
            ov.new_seqs[event_id] = seq
            for nb in outcome.new_batches:
                ov.batches[nb.batch_id] = nb
                new_batches[nb.batch_id] = nb
            for tb in outcome.touched:
                if tb.batch_id not in new_batches:
                    touched[tb.batch_id] = tb
            if outcome.edges:
                edges.extend(outcome.edges)
            if kind in REGISTRY_KINDS:
                registry.apply(ev, event_id)
                subject = str(getattr(ev, "subject_facility_id", ""))
                facilities_changed.add(subject)
                release(FACILITY_WAIT + subject)
            emit(slot, it, AppendResult(event_id, "appended", seq=seq))
            seq += 1
            if waiting_on:
                # other copies of this event still waiting (other signatures or sources): decide them now
                release(EVENT_WAIT + event_id)
                # 6. children before parents: events waiting for the batches just made (or whose
                #    custody just changed) try again
                for nb in outcome.new_batches:
                    release(nb.batch_id)
                for tb in outcome.touched:
                    release(tb.batch_id)

        # 7. write everything in this one transaction (driver-level executemany: see store.bulk_insert)
        if entry_rows:
            bulk_insert(conn, ENTRIES, ENTRY_COLUMNS, entry_rows)
            start = self.size
            nodes = tree.nodes_for_append(start, leaves, lambda keys: fetch_nodes(conn, keys))
            insert_nodes(conn, nodes)
        if new_batches:
            bulk_insert(
                conn, BATCHES, BATCH_COLUMNS, [_batch_row(to_db, times_db, nb) for nb in new_batches.values()]
            )
        if touched:
            bulk_update(
                conn,
                BATCHES,
                "batch_id",
                ("consumed_kg", "custody"),
                [(str(tb.consumed_kg), tb.custody_json(), tb.batch_id) for tb in touched.values()],
            )
        if edges:
            bulk_insert(
                conn,
                EDGES,
                ("parent", "child", "kg", "seq"),
                [(e.parent, e.child, str(e.kg), e.seq) for e in edges],
            )
        if rejections:
            conn.execute(REJECTIONS.insert(), rejections)
        self._write_facilities(conn, facilities_changed, seq)
        done = sorted(parked_done - set(parked_new))
        for part in chunks(done):
            conn.execute(PARKED.delete().where(PARKED.c.park_id.in_(part)))
        for row in parked_new.values():
            conn.execute(PARKED.delete().where(PARKED.c.park_id == row["park_id"]))
            conn.execute(PARKED.insert().values(**row))
        self.size = seq
        self.head_hash = prev
        return [r for r in slots if r is not None] + unparked

    def _winner(self, conn: Connection, ov: _Overlay, event_id: str) -> str:
        """Which copy of an event is in the ledger: its seq and key id (for a conflict's detail)."""
        seq = ov.new_seqs.get(event_id)
        if seq is None:
            seq = conn.execute(select(ENTRIES.c.seq).where(ENTRIES.c.event_id == event_id)).scalar()
        data = ov.event_bytes(event_id) or b"{}"
        try:
            kid = json.loads(data).get("sig", {}).get("key_id", "?")
        except ValueError:
            kid = "?"
        return f"appended at seq {seq}, signed with key {kid}, the first copy that passed every check"

    def _unpark(self, conn: Connection, park_id: str, parked_new: dict[str, dict[str, Any]]) -> Incoming:
        for ids in self._parked_index.values():
            ids.discard(park_id)
        if park_id in parked_new:
            row = parked_new.pop(park_id)
            data, raw, source, since = (
                bytes(row["data"]),
                bytes(row["raw"]),
                str(row["source"]),
                row["parked_at"],
            )
        else:
            stored = conn.execute(
                select(PARKED.c.data, PARKED.c.raw, PARKED.c.source, PARKED.c.parked_at).where(
                    PARKED.c.park_id == park_id
                )
            ).first()
            if stored is None:
                return Incoming(
                    raw=b"",
                    error=EventError(Reason.INTERNAL_ERROR, f"parked copy {park_id} vanished"),
                    park_id=park_id,
                )
            data, raw, source = bytes(stored.data), bytes(stored.raw), str(stored.source)
            since = _aware(stored.parked_at)
        try:
            return Incoming(
                raw=raw,
                decoded=decode(data),
                signature_checked=False,
                source=source,
                parked_at=since,
                park_id=park_id,
            )
        except EventError as exc:
            return Incoming(raw=raw, error=exc, source=source, park_id=park_id)

    def _park_room(self) -> bool:
        return sum(len(v) for v in self._parked_index.values()) < PARK_MAX_EVENTS

    @staticmethod
    def _rejection(event_id: str | None, err: EventError, it: Incoming, ts: datetime) -> dict[str, Any]:
        return {
            "event_id": event_id,
            "reason": err.reason.value,
            "detail": err.detail[:2000],
            "raw": it.raw,
            "source": it.source,
            "created_at": ts,
        }

    def _write_facilities(self, conn: Connection, changed: set[str], seq: int) -> None:
        when = now()
        for fid in sorted(changed):
            fac = self.registry.facilities.get(fid)
            if fac is None:
                continue
            keys = [
                {
                    "key_id": k.key_id,
                    "valid_from": k.valid_from.isoformat(),
                    "valid_until": k.valid_until.isoformat() if k.valid_until else None,
                    "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None,
                }
                for (f, _), k in self.registry.keys.items()
                if f == fid
            ]
            conn.execute(FACILITIES.delete().where(FACILITIES.c.facility_id == fid))
            conn.execute(
                FACILITIES.insert().values(
                    facility_id=fid,
                    legal_entity=fac.legal_entity,
                    country=fac.country,
                    roles=json.dumps(sorted(r.value for r in fac.roles)),
                    feoc=fac.feoc_at(when),
                    pfe=fac.pfe_at(when),
                    keys=json.dumps(keys),
                    seq=seq,
                )
            )

    def _store_offsets(self, conn: Connection, offsets: Mapping[tuple[str, str, int], int]) -> None:
        for (consumer, topic, partition), nxt in offsets.items():
            where = (
                (OFFSETS.c.consumer == consumer)
                & (OFFSETS.c.topic == topic)
                & (OFFSETS.c.partition == partition)
            )
            current = conn.execute(select(OFFSETS.c.next_offset).where(where)).scalar()
            if current is not None:
                # forward only: a worker that lost the partition and still commits cannot move it back
                if nxt > current:
                    conn.execute(OFFSETS.update().where(where).values(next_offset=nxt))
            else:
                conn.execute(
                    OFFSETS.insert().values(
                        consumer=consumer, topic=topic, partition=partition, next_offset=nxt
                    )
                )

    def stored_offsets(self, consumer: str) -> dict[tuple[str, int], int]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(OFFSETS).where(OFFSETS.c.consumer == consumer))
            return {(r.topic, r.partition): r.next_offset for r in rows}

    def record_rejections(
        self, items: Sequence[Incoming], *, offsets: Mapping[tuple[str, str, int], int] | None = None
    ) -> None:
        """Record events rejected upstream (verify stage) with their original bytes."""
        self.append(items, offsets=offsets)

    def expire_parked(self, max_age: timedelta = PARK_MAX_AGE) -> list[AppendResult]:
        """Reject parked events older than `max_age`: parents that never came (PARENTS_TIMEOUT), or a
        shipment/receipt that never came (NOT_CUSTODIAN)."""
        cutoff = now() - max_age
        with write_transaction(self.engine, self.url, self.writer_wait_s) as conn:
            rows = conn.execute(select(PARKED).where(PARKED.c.parked_at <= cutoff)).fetchall()
            out: list[AppendResult] = []
            ts = now()
            for row in rows:
                missing = [m for m in json.loads(row.missing) if not m.startswith(EVENT_WAIT)]
                waited = f"{max_age.total_seconds():g} s"
                if row.reason == Reason.NOT_CUSTODIAN.value:  # the shipment or receipt never came
                    err = EventError(
                        Reason.NOT_CUSTODIAN, f"{row.detail} (waited {waited} for the custody change)"
                    )
                elif row.reason in (Reason.UNKNOWN_FACILITY.value, Reason.UNKNOWN_KEY.value):
                    err = EventError(Reason(row.reason), f"{row.detail} (waited {waited} for a registration)")
                else:
                    err = EventError(
                        Reason.PARENTS_TIMEOUT,
                        f"input batch(es) {', '.join(missing)} did not arrive within {waited}",
                    )
                conn.execute(
                    REJECTIONS.insert().values(
                        event_id=row.event_id,
                        reason=err.reason.value,
                        detail=err.detail,
                        raw=bytes(row.raw),
                        source=row.source,
                        created_at=ts,
                    )
                )
                conn.execute(PARKED.delete().where(PARKED.c.park_id == row.park_id))
                for ids in self._parked_index.values():
                    ids.discard(row.park_id)
                out.append(
                    AppendResult(
                        row.event_id,
                        "rejected",
                        reason=err.reason.value,
                        detail=err.detail,
                        source=str(row.source),
                        raw=bytes(row.raw),
                    )
                )
        self._parked_index = {k: v for k, v in self._parked_index.items() if v}
        return out

    def refresh_registry(self) -> None:
        """Re-read registry state written by another process (verify workers are readers)."""
        self._load()

    def decisions(
        self, event_ids: Iterable[str] = (), sources: Iterable[str] = ()
    ) -> dict[str, tuple[Status, int | None, str | None, str | None]]:
        """What the ledger decided, by event id or by rejection source (e.g. "topic/partition/offset").

        Returns {key: (status, seq, reason, detail)} for the keys it knows; "parked" while waiting.
        """
        ids = sorted(set(event_ids))
        srcs = sorted(set(sources))
        out: dict[str, tuple[Status, int | None, str | None, str | None]] = {}
        with self.engine.connect() as conn:
            for part in chunks(ids):
                for r in conn.execute(select(PARKED.c.event_id).where(PARKED.c.event_id.in_(part))):
                    out[r.event_id] = ("parked", None, None, None)
                for r in conn.execute(
                    select(REJECTIONS.c.event_id, REJECTIONS.c.reason, REJECTIONS.c.detail).where(
                        REJECTIONS.c.event_id.in_(part)
                    )
                ):
                    out[r.event_id] = ("rejected", None, r.reason, r.detail)
                for r in conn.execute(
                    select(ENTRIES.c.event_id, ENTRIES.c.seq).where(ENTRIES.c.event_id.in_(part))
                ):
                    out[r.event_id] = ("appended", int(r.seq), None, None)
            for part in chunks(srcs):
                for r in conn.execute(
                    select(REJECTIONS.c.source, REJECTIONS.c.reason, REJECTIONS.c.detail).where(
                        REJECTIONS.c.source.in_(part)
                    )
                ):
                    out[r.source] = ("rejected", None, r.reason, r.detail)
        return out

    def rejections_at(self, sources: Iterable[str]) -> list[RecordedRejection]:
        """The rejections recorded for these sources, in the order they were recorded."""
        out: list[RecordedRejection] = []
        with self.engine.connect() as conn:
            for part in chunks(sorted(set(sources))):
                rows = conn.execute(
                    select(
                        REJECTIONS.c.raw,
                        REJECTIONS.c.source,
                        REJECTIONS.c.reason,
                        REJECTIONS.c.detail,
                        REJECTIONS.c.event_id,
                    )
                    .where(REJECTIONS.c.source.in_(part))
                    .order_by(REJECTIONS.c.id)
                )
                out.extend((bytes(r.raw), r.source, r.reason, r.detail, r.event_id) for r in rows)
        return out

    def parked_count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(PARKED)).scalar_one())

    # -- checkpoints ------------------------------------------------------------------------------
    def head(self) -> Head:
        with self.engine.connect() as conn:
            root = tree.root_from_nodes(self.size, lambda keys: fetch_nodes(conn, keys))
        return Head(self.size, self.head_hash, root)

    def make_checkpoint(self) -> str | None:
        """Sign the current tree head (C2SP checkpoint) unless the latest checkpoint already covers it."""
        if self.operator_key is None:
            raise StoreError("signing a checkpoint needs the operator key (--operator-key)")
        with write_transaction(self.engine, self.url, self.writer_wait_s) as conn:
            # the store's size, not this object's: another process (the sequencer) may have appended since
            last = conn.execute(select(func.max(ENTRIES.c.seq))).scalar()
            size = 0 if last is None else int(last) + 1
            latest = conn.execute(
                select(CHECKPOINTS.c.size).order_by(CHECKPOINTS.c.size.desc()).limit(1)
            ).first()
            if latest is not None and latest.size >= size:
                return None
            root = tree.root_from_nodes(size, lambda keys: fetch_nodes(conn, keys))
            body = Checkpoint(self.origin, size, root).body()
            note = sign_note(body, self.origin, self.operator_key)
            conn.execute(CHECKPOINTS.insert().values(size=size, root_hash=root, note=note, created_at=now()))
        return note

    def latest_checkpoint(self) -> str | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(CHECKPOINTS.c.note).order_by(CHECKPOINTS.c.size.desc()).limit(1)
            ).first()
            return None if row is None else str(row.note)

    # -- queries --------------------------------------------------------------------------------
    def batch(self, batch_id: str) -> BatchState | None:
        with self.engine.connect() as conn:
            row = conn.execute(BATCHES.select().where(BATCHES.c.batch_id == batch_id)).first()
            return None if row is None else row_to_batch(row)

    def entry_data(self, event_ids: Iterable[str]) -> dict[str, tuple[int, bytes]]:
        out: dict[str, tuple[int, bytes]] = {}
        with self.engine.connect() as conn:
            for part in chunks(sorted(set(event_ids))):
                for row in conn.execute(
                    select(ENTRIES.c.event_id, ENTRIES.c.seq, ENTRIES.c.data).where(
                        ENTRIES.c.event_id.in_(part)
                    )
                ):
                    out[row.event_id] = (row.seq, bytes(row.data))
        return out

    def stats(self) -> dict[str, Any]:
        with self.engine.connect() as conn:
            rej = conn.execute(
                select(REJECTIONS.c.reason, func.count())
                .group_by(REJECTIONS.c.reason)
                .order_by(REJECTIONS.c.reason)
            ).all()
            batches = conn.execute(select(func.count()).select_from(BATCHES)).scalar_one()
            parked = conn.execute(select(func.count()).select_from(PARKED)).scalar_one()
            ck = conn.execute(select(CHECKPOINTS.c.size).order_by(CHECKPOINTS.c.size.desc()).limit(1)).first()
        return {
            "origin": self.origin,
            "entries": self.size,
            "head": self.head_hash.hex(),
            "batches": int(batches),
            "parked": int(parked),
            "facilities": len(self.registry.facilities),
            "rejections": {str(r[0]): int(r[1]) for r in rej},
            "latest_checkpoint_size": None if ck is None else int(ck.size),
        }

    # -- provenance and lineage -----------------------------------------------------------------
    def ancestor_nodes(self, batch_id: str) -> dict[str, BatchNode]:
        """The batch and all its ancestors as provenance nodes: two queries, whatever the depth."""
        seed = select(literal(batch_id, String).label("id")).cte("anc", recursive=True)
        anc = seed.union(select(EDGES.c.parent).join(seed, EDGES.c.child == seed.c.id))
        with self.engine.connect() as conn:
            rows = conn.execute(select(BATCHES).join(anc, BATCHES.c.batch_id == anc.c.id))
            batch_rows = {r.batch_id: r for r in rows}
            edges = conn.execute(
                select(EDGES.c.parent, EDGES.c.child, EDGES.c.kg).join(anc, EDGES.c.child == anc.c.id)
            )
            inputs: dict[str, list[tuple[str, float]]] = {}
            for e in edges:
                inputs.setdefault(e.child, []).append((e.parent, float(e.kg)))
        return {bid: node_from_row(r, tuple(sorted(inputs.get(bid, [])))) for bid, r in batch_rows.items()}

    def provenance(self, batch_id: str) -> Provenance:
        """From the provenance index (written at append): one row plus the ancestor event ids."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(
                    BATCHES.c.origins, BATCHES.c.value_usd, *(BATCHES.c[el.value] for el in ELEMENTS)
                ).where(BATCHES.c.batch_id == batch_id)
            ).first()
            if row is None:
                raise StoreError(f"batch {batch_id!r} is not in the ledger")
            # the ancestor walk returns ~10k rows for a pack: plain driver tuples, no Row objects
            mark = placeholder(conn)
            cur = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
            cur.execute(
                "WITH RECURSIVE anc(id) AS (SELECT CAST(" + mark + " AS TEXT) UNION "
                "SELECT CAST(e.parent AS TEXT) FROM edges e JOIN anc a ON e.child = a.id) "
                "SELECT anc.id, b.event_id FROM anc LEFT JOIN batches b ON b.batch_id = anc.id",
                (batch_id,),
            )
            ids: list[Any] = list(cur.fetchall())
            cur.close()
        mass, value = decode_origins(row.origins)
        return Provenance(
            batch_id=batch_id,
            elements={el: ElementSplit(float(getattr(row, el.value)), mass[el]) for el in ELEMENTS},
            value_usd=None if row.value_usd is None else float(row.value_usd),
            value_origins=value,
            ancestors=len(ids) - 1,
            events=sorted({ev for _, ev in ids if ev is not None}),
            missing_parents=sorted(bid for bid, ev in ids if ev is None),
        )

    def recompute_provenance(self, batch_id: str) -> Provenance:
        """The same, recomputed from the ancestor graph (the offline verifier's path; tests compare)."""
        nodes = self.ancestor_nodes(batch_id)
        if batch_id not in nodes:
            raise StoreError(f"batch {batch_id!r} is not in the ledger")
        return compute(batch_id, nodes)

    def lineage(self, batch_id: str, *, direction: str = "up", depth: int = 50) -> list[dict[str, Any]]:
        """Edges up (ancestors) or down (descendants) to `depth` hops, nearest first."""
        if direction not in ("up", "down"):
            raise ValueError("direction is up or down")
        if self.batch(batch_id) is None:
            raise StoreError(f"batch {batch_id!r} is not in the ledger")
        near, far = ("child", "parent") if direction == "up" else ("parent", "child")
        sql = (
            # both sides cast to TEXT: PostgreSQL wants one type for the recursive column (varchar vs text)
            f"WITH RECURSIVE walk(id, depth) AS (SELECT CAST(:b AS TEXT), 0 UNION "
            f"SELECT CAST(e.{far} AS TEXT), w.depth + 1 FROM edges e JOIN walk w ON e.{near} = w.id WHERE w.depth < :d) "
            f"SELECT e.parent, e.child, e.kg, MIN(w.depth) AS depth FROM edges e JOIN walk w ON e.{near} = w.id "
            f"WHERE w.depth < :d GROUP BY e.parent, e.child, e.kg ORDER BY depth, e.parent, e.child"
        )
        with self.engine.connect() as conn:
            rows = conn.execute(text(sql), {"b": batch_id, "d": depth}).all()
            ids = sorted({r.parent for r in rows} | {r.child for r in rows} | {batch_id})
            info: dict[str, Any] = {}
            for part in chunks(ids):
                for b in conn.execute(
                    select(
                        BATCHES.c.batch_id,
                        BATCHES.c.kind,
                        BATCHES.c.facility_id,
                        BATCHES.c.country,
                        BATCHES.c.material,
                        BATCHES.c.kg,
                    ).where(BATCHES.c.batch_id.in_(part))
                ):
                    info[b.batch_id] = b
        out = []
        for r in rows:
            p, c = info.get(r.parent), info.get(r.child)
            out.append(
                {
                    "depth": int(r.depth) + 1,
                    "parent": r.parent,
                    "child": r.child,
                    "kg": r.kg,
                    "parent_material": p.material if p else None,
                    "parent_facility": p.facility_id if p else None,
                    "parent_country": p.country if p else None,
                    "child_material": c.material if c else None,
                    "child_facility": c.facility_id if c else None,
                    "child_country": c.country if c else None,
                }
            )
        return out


def node_from_row(row: Any, inputs: tuple[tuple[str, float], ...]) -> BatchNode:
    extra = json.loads(row.extra)
    produced = json.loads(extra.get("event_produced", "{}"))
    value_out = json.loads(extra.get("event_value_out", "null"))
    feeds: tuple[FeedInfo, ...] = ()
    if "external_feed" in extra:
        feeds = tuple(
            FeedInfo(
                f["consumer"],
                float(f["kg"]),
                {el: float(f.get("contained_kg", {}).get(el.value, 0)) for el in ELEMENTS},
                f.get("origin_country") or "",
            )
            for f in json.loads(extra["external_feed"])
        )
    return BatchNode(
        batch_id=row.batch_id,
        event_id=row.event_id,
        kind=Kind(row.kind),
        facility_id=row.facility_id,
        country=row.country,
        feoc=bool(row.feoc),
        pfe=bool(row.pfe),
        time=_aware(row.time),
        kg=float(row.kg),
        contained={el: float(getattr(row, el.value)) for el in ELEMENTS},
        value_usd=None if row.value_usd is None else float(row.value_usd),
        inputs=inputs,
        event_produced={el: float(produced.get(el.value, getattr(row, el.value))) for el in ELEMENTS},
        event_value_out=None if value_out is None else float(value_out),
        feed_consumer=extra.get("feed_consumer"),
        external_feed=feeds,
        material=row.material,
    )


def verify_ledger(
    led: Ledger, *, signatures: bool = True, progress: Any = None, full: bool = False, record: bool = True
) -> Any:
    """Verify `led`'s store end to end (see ledger.verify). Incremental unless `full`: signatures below
    the verified mark are not re-checked; a clean run moves the mark (`record`)."""
    from ledger.verify import read_mark, record_mark, verify_store

    since, why = (0, None) if full else read_mark(led.engine, led.origin, led.operator_public_key)
    report = verify_store(
        led.engine,
        origin=led.origin,
        operator_public_key=led.operator_public_key,
        signatures=signatures,
        progress=progress,
        signatures_from=since,
    )
    if why:
        report.notes.append(why)
    if record and signatures:
        not_recorded = record_mark(led.engine, report, report.checked_roots)
        if not_recorded:
            report.notes.append(not_recorded)
    return report
