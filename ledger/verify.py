"""Full verification of a ledger store: chain, Merkle tree, checkpoints, signatures.

Steps (each names the first entry that does not match):
 1. entries are numbered 0..n-1 with no gap (a deleted or inserted row shows here);
 2. each entry's leaf hash is SHA-256(0x00 || stored bytes) (edited bytes show here);
 3. each entry hash is SHA-256(previous entry hash || leaf), from the genesis (reordered rows show here);
 4. the Merkle root recomputed from the leaves equals every stored checkpoint's root, each checkpoint's
    signature verifies under the operator key, and the stored tree nodes give the same head root;
 5. every event's signature verifies under a key its facility had at the event's time (both cores);
 6. the derived tables (batches with their provenance index, balance and custody; edges; the entries'
    event_id/kind/facility_id/time columns) equal a replay of the signed entries through the append
    rules; no Merkle node is stored beyond the head.
Steps 1-4 and the replay stream the entries once; step 5 runs in worker processes on the same chunks.
Incremental: `signatures_from` (the verified mark, see `read_mark`) skips step 5 below it.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from ledger import chain, tree
from ledger.checkpoint import Checkpoint, CheckpointError, NoteError, open_note
from ledger.merkle import node_hash
from ledger.registry import Registry
from ledger.rules import BatchState, Edge, check_and_plan
from ledger.store import (
    BATCHES,
    CHECKPOINTS,
    EDGES,
    ENTRIES,
    NODES,
    as_store_error,
    describe,
    fetch_nodes,
    get_meta,
    placeholder,
    set_meta,
)
from schemas.events import ELEMENTS, REGISTRY_KINDS
from schemas.reasons import EventError, Reason
from schemas.signing import decode, verify_signature

CHUNK = 20_000  # entries read per query: bounded memory whatever the ledger size
MAX_ERRORS = 100  # a thoroughly corrupted store must not produce an unbounded report


@dataclass
class VerifyReport:
    entries: int = 0
    checkpoints: int = 0
    signatures_checked: int = 0
    errors: list[tuple[int | None, str]] = field(default_factory=list)
    root_hash: bytes = b""
    signatures_from: int = 0  # entries below it were vouched for by the verified mark (incremental)
    checked_roots: dict[int, bytes] = field(default_factory=dict)  # checkpoint size -> root, checked
    notes: list[str] = field(default_factory=list)  # about the mark: ignored, not recorded

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def first_error(self) -> tuple[int | None, str] | None:
        """The lowest-numbered entry that does not match; else a store-wide finding."""
        return self.errors[0] if self.errors else None

    def add(self, seq: int | None, message: str) -> None:
        if len(self.errors) < MAX_ERRORS:
            self.errors.append((seq, message))


class _CompactRange:
    """Roots of the perfect subtrees covering leaves [0, n): the Merkle root at any size in O(log n)."""

    def __init__(self) -> None:
        self.stack: list[tuple[int, bytes]] = []  # (height, hash), heights strictly decreasing
        self.size = 0

    def append(self, leaf: bytes) -> list[tuple[int, int, bytes]]:
        """Add a leaf; returns every perfect-subtree node it completes as (level, index, hash)."""
        h, node = 0, leaf
        self.size += 1
        done = [(0, self.size - 1, leaf)]
        while self.stack and self.stack[-1][0] == h:
            _, left = self.stack.pop()
            node = node_hash(left, node)
            h += 1
            done.append((h, (self.size >> h) - 1, node))
        self.stack.append((h, node))
        return done

    def root(self) -> bytes:
        if not self.stack:
            return hashlib.sha256(b"").digest()
        node = self.stack[-1][1]
        for _, left in reversed(self.stack[:-1]):
            node = node_hash(left, node)
        return node


def _short(h: bytes) -> str:
    return h.hex()[:12] + ".."


# -- signature workers -------------------------------------------------------------------------
_REGISTRY: Registry | None = None


def _init_worker(registry_events: list[bytes]) -> None:
    global _REGISTRY
    reg = Registry()
    for raw in registry_events:
        try:
            d = decode(raw)
        except EventError:
            continue  # reported by the main pass as an edited entry; its key just is not trusted here
        reg.apply(d.event, d.event_id)
    _REGISTRY = reg


def _check_signatures(rows: list[tuple[int, bytes]]) -> list[tuple[int, str]]:
    assert _REGISTRY is not None
    bad: list[tuple[int, str]] = []
    for seq, data in rows:
        try:
            d = decode(data)
            if seq == 0 and d.kind in REGISTRY_KINDS and d.facility_id == "registry":
                rec = _REGISTRY.keys.get(("registry", d.key_id))
                if rec is None:
                    raise EventError(
                        Reason.UNKNOWN_KEY, "the genesis entry is not signed by the registry key"
                    )
                verify_signature(d, rec.public_key)
            else:
                _REGISTRY.authorize(d)
        except EventError as exc:
            bad.append((seq, f"entry {seq}: {exc.reason.value}: {exc.detail}"))
        except Exception as exc:
            bad.append((seq, f"entry {seq}: undecodable: {type(exc).__name__}: {exc}"))
    return bad


def _chunks(engine: Engine) -> Iterator[Sequence[Any]]:
    """Entries in seq order, CHUNK at a time (keyset pagination through the driver: bounded memory)."""
    last = -1
    with engine.connect() as conn:
        mark = placeholder(conn)
        sql = (
            "SELECT seq, kind, data, leaf_hash, entry_hash, event_id, facility_id, time FROM entries "
            f"WHERE seq > {mark} ORDER BY seq LIMIT {CHUNK}"
        )
        cur = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]  # plain tuples: no Row objects
        try:
            while True:
                cur.execute(sql, (last,))
                rows = cur.fetchall()
                if not rows:
                    return
                yield rows
                last = rows[-1][0]
        finally:
            cur.close()


def verify_store(
    engine: Engine,
    *,
    origin: str,
    operator_public_key: Any,
    signatures: bool = True,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
    derived: bool = True,
    signatures_from: int = 0,
) -> VerifyReport:
    """Verify the store; `signatures_from` skips the signature checks of entries below it (the
    incremental mode: see `ledger.verify.verified_mark`); `derived` recomputes the derived tables."""
    since = max(0, signatures_from)
    report = VerifyReport(signatures_from=since)
    # derived-table findings come after the chain's: an edited entry also breaks what it derives
    derived_report = VerifyReport()
    replay = _Replay(derived_report) if derived else None
    with engine.connect() as conn:
        cps = conn.execute(select(CHECKPOINTS).order_by(CHECKPOINTS.c.size)).all()
        registry_rows = conn.execute(
            select(ENTRIES.c.data)
            .where(ENTRIES.c.kind.in_([k.value for k in REGISTRY_KINDS]))
            .order_by(ENTRIES.c.seq)
        ).all()
    checkpoints = {int(c.size): c for c in cps}
    pool: ProcessPoolExecutor | None = None
    futures: list[Future[list[tuple[int, str]]]] = []
    if signatures:
        n = workers or max(1, min(2, os.cpu_count() or 1))
        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
        pool = ProcessPoolExecutor(
            max_workers=n,
            mp_context=ctx,
            initializer=_init_worker,
            initargs=([bytes(r.data) for r in registry_rows],),
        )
    expected = 0
    prev = chain.GENESIS
    cr = _CompactRange()
    try:
        for rows in _chunks(engine):
            sig_rows: list[tuple[int, bytes]] = []
            computed: list[tuple[int, int, bytes]] = []
            for seq, kind, raw_data, raw_leaf, raw_entry_hash, event_id, facility_id, time in rows:
                data = bytes(raw_data)
                stored_leaf = bytes(raw_leaf)
                stored_hash = bytes(raw_entry_hash)
                # 1. contiguous numbering
                if seq != expected:
                    report.add(expected, f"entry {expected} is missing (the next stored entry is {seq})")
                    expected = seq
                # 2. bytes against the leaf hash
                leaf = chain.leaf_of(data)
                if leaf != stored_leaf:
                    report.add(
                        seq,
                        f"entry {seq}: stored bytes do not match its leaf hash "
                        f"(stored {_short(stored_leaf)} != recomputed {_short(leaf)}): the event was edited",
                    )
                # 3. the chain link
                eh = chain.entry_hash(prev, leaf)
                if eh != stored_hash:
                    report.add(
                        seq,
                        f"chain broken at entry {seq}: stored hash {_short(stored_hash)} != recomputed {_short(eh)}",
                    )
                prev = stored_hash  # continue from what is stored, so one break is reported once
                computed.extend(cr.append(leaf))
                expected = seq + 1
                # 4. checkpoints at this size
                cp = checkpoints.get(cr.size)
                if cp is not None:
                    _check_checkpoint(report, cp, cr.root(), origin, operator_public_key)
                if seq >= since:
                    sig_rows.append((seq, data))
                if replay is not None:
                    replay.entry(seq, data, event_id, kind, facility_id, time)
            # 4a. every stored Merkle node this chunk completes equals the one recomputed from the leaves
            _check_nodes(engine, computed, report)
            if pool is not None and sig_rows:
                futures.append(pool.submit(_check_signatures, sig_rows))
            report.entries = expected
            if progress is not None:
                progress(len(rows))
        for size in checkpoints:
            if size > cr.size:
                report.add(
                    None, f"checkpoint at size {size} is beyond the {cr.size} entries stored: entries deleted"
                )
        report.root_hash = cr.root()
        # 4b. the stored Merkle nodes must give the same head root as the leaves
        if cr.size:
            with engine.connect() as conn:
                try:
                    stored_root = tree.root_from_nodes(cr.size, lambda keys: fetch_nodes(conn, keys))
                except Exception as exc:
                    report.add(None, f"stored Merkle nodes are incomplete: {exc}")
                else:
                    if stored_root != report.root_hash:
                        report.add(
                            None,
                            f"stored Merkle nodes give root {_short(stored_root)}, the entries give "
                            f"{_short(report.root_hash)}",
                        )
        # 5. signatures
        for fut in futures:
            for seq, message in fut.result():
                report.add(seq, message)
        # 4c. no stored node beyond the tree: one there would break every later append
        with engine.connect() as conn:
            beyond = [
                (int(r.level), int(r.idx))
                for level in range(64)  # a node (level, idx) is complete iff idx < size >> level
                for r in conn.execute(
                    select(NODES.c.level, NODES.c.idx)
                    .where(NODES.c.level == level, NODES.c.idx >= (cr.size >> level))
                    .limit(5)
                )
            ]
            beyond += [
                (int(r.level), int(r.idx))
                for r in conn.execute(
                    select(NODES.c.level, NODES.c.idx)
                    .where((NODES.c.level < 0) | (NODES.c.level >= 64) | (NODES.c.idx < 0))
                    .limit(5)
                )
            ]
            for level, idx in beyond:
                report.add(
                    None,
                    f"stored Merkle node (level {level}, index {idx}) lies beyond the {cr.size} entries: "
                    "the store was edited (appends refuse until it is removed)",
                )
        # 6. the derived tables against the replay of the signed entries
        if replay is not None:
            replay.compare(engine)
        report.signatures_checked = max(0, report.entries - since) if signatures else 0
        report.checkpoints = len(checkpoints)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    report.errors.sort(key=lambda e: (e[0] is None, e[0] or 0))
    derived_report.errors.sort(key=lambda e: (e[0] is None, e[0] or 0))
    for seq, message in derived_report.errors:
        report.add(seq, message)
    return report


def _check_checkpoint(report: VerifyReport, cp: Any, root: bytes, origin: str, public_key: Any) -> None:
    size = int(cp.size)
    try:
        body = open_note(str(cp.note), origin, public_key)
        parsed = Checkpoint.parse(body)
    except (NoteError, CheckpointError) as exc:
        report.add(size - 1, f"checkpoint at size {size}: {exc}")
        return
    if parsed.size != size or parsed.origin != origin:
        report.add(size - 1, f"checkpoint at size {size} says size {parsed.size} of {parsed.origin!r}")
    if parsed.root_hash != root or bytes(cp.root_hash) != root:
        report.add(
            size - 1,
            f"checkpoint at size {size}: signed root {_short(parsed.root_hash)} != root of the stored entries "
            f"{_short(root)}",
        )
    else:
        report.checked_roots[size] = root
    report.checkpoints += 1


def _check_nodes(engine: Engine, computed: list[tuple[int, int, bytes]], report: VerifyReport) -> None:
    """Compare recomputed nodes with stored ones: one range query per tree level (not IN lists)."""
    if not computed:
        return
    by_level: dict[int, list[tuple[int, bytes]]] = {}
    for level, idx, h in computed:
        by_level.setdefault(level, []).append((idx, h))
    with engine.connect() as conn:
        mark = placeholder(conn)
        sql = f"SELECT idx, hash FROM merkle_nodes WHERE level = {mark} AND idx BETWEEN {mark} AND {mark}"
        cur = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        for level, nodes in sorted(by_level.items()):
            lo, hi = nodes[0][0], nodes[-1][0]
            cur.execute(sql, (level, lo, hi))
            stored = {int(i): bytes(h) for i, h in cur.fetchall()}
            for idx, h in nodes:
                got = stored.get(idx)
                if got != h:
                    first, last = idx << level, ((idx + 1) << level) - 1
                    what = "missing" if got is None else f"{_short(got)} != recomputed {_short(h)}"
                    # a leaf node names its entry; an inner node only says which range it covers
                    report.add(
                        first if level == 0 else None,
                        f"stored Merkle node (level {level}, index {idx}) over entries {first}..{last}: {what}",
                    )


# -- derived tables ----------------------------------------------------------------------------
class _ReplayState:
    """The rules' view during a replay: batches and events recomputed from the signed entries only."""

    def __init__(self) -> None:
        self.batches: dict[str, BatchState] = {}
        self.events: dict[str, bytes] = {}

    def batch(self, batch_id: str) -> BatchState | None:
        return self.batches.get(batch_id)

    def event_bytes(self, event_id: str) -> bytes | None:
        return self.events.get(event_id)


class _Replay:
    """Replays the signed entries through the append rules, in order, and keeps what they derive.

    The derived tables (batches with their provenance index, balance and custody; edges; the entries'
    event_id/kind/facility_id/time columns) are then compared with what the store holds.
    """

    def __init__(self, report: VerifyReport) -> None:
        self.report = report
        self.state = _ReplayState()
        self.registry = Registry()
        self.edges: dict[tuple[str, str], Edge] = {}

    def entry(self, seq: int, data: bytes, event_id: Any, kind: Any, facility_id: Any, time: Any) -> None:
        try:
            d = decode(data)
        except EventError:
            return  # an edited entry: the chain pass and the signature pass name it
        stored = {"event_id": event_id, "kind": kind, "facility_id": facility_id}
        recomputed = {"event_id": d.event_id, "kind": d.kind.value, "facility_id": d.facility_id}
        for col, value in stored.items():
            if value != recomputed[col]:
                self.report.add(
                    seq, f"entries[{seq}].{col}: stored {_clip(value)} != recomputed {_clip(recomputed[col])}"
                )
        if time is not None and _utc(time) != d.event.time.astimezone(UTC):
            self.report.add(
                seq, f"entries[{seq}].time: stored {_clip(time)} != recomputed {d.event.time.isoformat()}"
            )
        try:
            outcome = check_and_plan(d, self.state, self.registry, seq)
        except EventError as exc:
            self.report.add(
                seq,
                f"entry {seq} does not replay: {exc.reason.value}: {_clip(exc.detail, 160)} "
                "(it was appended against edited derived tables)",
            )
            return
        self.state.events[d.event_id] = d.signed
        for b in outcome.new_batches:
            self.state.batches[b.batch_id] = b
        for e in outcome.edges:
            self.edges[(e.parent, e.child)] = e
        if d.kind in REGISTRY_KINDS:
            self.registry.apply(d.event, d.event_id)

    def compare(self, engine: Engine) -> None:
        """Every stored batch and edge row against the replay; extra and missing rows too."""
        from ledger.core import row_to_batch  # ledger.core imports this module lazily: no cycle

        seen: set[str] = set()
        with engine.connect() as conn:
            for row in conn.execute(select(BATCHES).order_by(BATCHES.c.seq, BATCHES.c.batch_id)):
                bid = str(row.batch_id)
                seen.add(bid)
                want = self.state.batches.get(bid)
                if want is None:
                    self.report.add(None, f"batches[{bid}]: stored row made by no entry (recomputed: none)")
                    continue
                try:
                    got = _batch_fields(row_to_batch(row))
                except Exception as exc:
                    self.report.add(want.seq, f"batches[{bid}]: unreadable row ({type(exc).__name__}: {exc})")
                    continue
                for col, value in _batch_fields(want).items():
                    if got[col] != value:
                        self.report.add(want.seq, _batch_diff(bid, col, got[col], value))
            for bid, b in self.state.batches.items():
                if bid not in seen:
                    self.report.add(b.seq, f"batches[{bid}]: missing (recomputed from entry {b.seq})")
            stored_edges: set[tuple[str, str]] = set()
            for row in conn.execute(select(EDGES).order_by(EDGES.c.seq, EDGES.c.parent, EDGES.c.child)):
                key = (str(row.parent), str(row.child))
                stored_edges.add(key)
                e = self.edges.get(key)
                if e is None:
                    self.report.add(None, f"edges[{key[0]} -> {key[1]}]: stored edge made by no entry")
                    continue
                got_e = (_dec(row.kg), int(row.seq))
                want_e = (_dec(e.kg), e.seq)
                if got_e != want_e:
                    self.report.add(
                        e.seq,
                        f"edges[{key[0]} -> {key[1]}]: stored kg {got_e[0]} at entry {got_e[1]} != "
                        f"recomputed kg {want_e[0]} at entry {want_e[1]}",
                    )
            for key, e in self.edges.items():
                if key not in stored_edges:
                    self.report.add(
                        e.seq, f"edges[{key[0]} -> {key[1]}]: missing (recomputed from entry {e.seq})"
                    )


def _dec(v: Any) -> str:
    try:
        return f"{Decimal(str(v)).normalize():f}"
    except (InvalidOperation, ValueError):
        return str(v)


def _utc(t: Any) -> Any:
    if isinstance(t, str):
        try:
            t = datetime.fromisoformat(t)
        except ValueError:
            return t
    if isinstance(t, datetime):
        return t.astimezone(UTC) if t.tzinfo is not None else t.replace(tzinfo=UTC)
    return t


def _clip(v: Any, n: int = 80) -> str:
    s = " ".join(str(v).split())
    return s if len(s) <= n else s[: n - 2] + ".."


def _batch_fields(b: BatchState) -> dict[str, Any]:
    """A batch's derived facts in a comparable form (exact decimals, UTC times, decoded index)."""
    out: dict[str, Any] = {
        "seq": b.seq,
        "event_id": b.event_id,
        "kind": b.kind.value,
        "facility_id": b.facility_id,
        "country": b.country,
        "feoc": bool(b.feoc),
        "pfe": bool(b.pfe),
        "time": _utc(b.time),
        "material": b.material,
        "kg": _dec(b.kg),
        "consumed_kg": _dec(b.consumed_kg),
        "value_usd": None if b.value_usd is None else _dec(b.value_usd),
        "custody": b.custody_json(),
        "extra": json.dumps(b.extra, sort_keys=True),
        "origins": {el.value: dict(b.mass.get(el, {})) for el in ELEMENTS},
        "value_origins": dict(b.value),
    }
    for el in ELEMENTS:
        out[el.value] = _dec(b.contained[el])
    return out


def _batch_diff(bid: str, col: str, got: Any, want: Any) -> str:
    if col == "origins":  # name the element and show the shares, as `provenance` would
        for el in sorted(set(got) | set(want)):
            g, w = got.get(el, {}), want.get(el, {})
            if g != w:
                return (
                    f"batches[{bid}].origins (provenance index) {el}: stored {_shares(g)} != "
                    f"recomputed {_shares(w)}"
                )
    if col == "value_origins":
        return f"batches[{bid}].origins (value index): stored {_shares(got)} != recomputed {_shares(want)}"
    return f"batches[{bid}].{col}: stored {_clip(got)} != recomputed {_clip(want)}"


def _shares(split: dict[Any, float]) -> str:
    total = sum(split.values()) or 1.0
    parts = sorted(split.items(), key=lambda kv: -kv[1])
    return _clip(
        "{" + ", ".join(f"{'/'.join(str(x) for x in k)}: {100 * v / total:.1f}%" for k, v in parts) + "}", 120
    )


# -- the verified mark -------------------------------------------------------------------------
MARK_KEY = "verified_mark"


@dataclass(frozen=True, slots=True)
class Verified:
    """How far `verify` has vouched for the store: entries [0, size) of `head` entries."""

    size: int
    head: int

    @property
    def tail(self) -> int:
        return max(0, self.head - self.size)

    def covers(self, seq: int | None) -> bool:
        return seq is not None and seq < self.size

    def note(self) -> str:
        """One line for a face to print next to an answer that rests on entries beyond the mark."""
        if self.size == 0:
            return (
                f"unverified: no `batteryledger verify` has vouched for this store yet ({self.head} entries)"
            )
        return (
            f"unverified tail: entries {self.size}..{self.head - 1} are not verified yet "
            "(run `batteryledger verify`)"
        )


def read_mark(engine: Engine, origin: str, operator_public_key: Any) -> tuple[int, str | None]:
    """The verified mark, if it is bound to a signed checkpoint of this store; else (0, why not).

    The mark is `{"size": n, "root": hex}` in the meta table, written by a `verify` that found nothing
    wrong. It counts only when a checkpoint at size n, signed by the operator key, carries that root,
    so a forged mark can only skip re-checking signatures the operator already signed a tree head over.
    """
    with engine.connect() as conn:
        raw = get_meta(conn, MARK_KEY)
        if raw is None:
            return 0, None
        try:
            mark = json.loads(raw)
            size, root = int(mark["size"]), bytes.fromhex(str(mark["root"]))
        except (ValueError, KeyError, TypeError):
            return 0, "the verified mark is unreadable: ignored"
        cp = conn.execute(select(CHECKPOINTS).where(CHECKPOINTS.c.size == size)).first()
    if cp is None:
        return 0, f"the verified mark at size {size} has no checkpoint: ignored"
    try:
        parsed = Checkpoint.parse(open_note(str(cp.note), origin, operator_public_key))
    except (NoteError, CheckpointError) as exc:
        return 0, f"the verified mark's checkpoint at size {size} does not verify ({exc}): ignored"
    if parsed.size != size or parsed.root_hash != root:
        return 0, f"the verified mark at size {size} disagrees with its signed checkpoint: ignored"
    return size, None


def record_mark(engine: Engine, report: VerifyReport, checkpoint_roots: dict[int, bytes]) -> str | None:
    """After a clean verify: mark the largest checked checkpoint as verified. Returns why not, if not."""
    if not report.ok or not checkpoint_roots:
        return None
    size = max(checkpoint_roots)
    try:
        with engine.begin() as conn:
            set_meta(conn, {MARK_KEY: json.dumps({"size": size, "root": checkpoint_roots[size].hex()})})
    except Exception as exc:  # a read-only store: verifying it still works, it just is not marked
        err = as_store_error(str(engine.url), exc)
        return f"verified mark not recorded: {err.diagnostics() if err else describe(exc)}"
    return None


def verified_through(engine: Engine, origin: str, operator_public_key: Any) -> Verified:
    """The faces' question: up to which entry does `verify` vouch for this store, and where is the head?"""
    size, _ = read_mark(engine, origin, operator_public_key)
    with engine.connect() as conn:
        last = conn.execute(select(func.max(ENTRIES.c.seq))).scalar()
    head = 0 if last is None else int(last) + 1
    return Verified(min(size, head), head)


VERIFIED_HEADER = "Batteryledger-Verified-Through"  # HTTP: "<size>/<head>"; size < head: an unverified tail


def verified(led: Any) -> Verified:
    """`verified_through` for an open Ledger."""
    return verified_through(led.engine, led.origin, led.operator_public_key)


def header_value(v: Verified) -> str:
    return f"{v.size}/{v.head}"


def unverified_note(led: Any, batch_id: str, *, down: bool = False) -> str | None:
    """None when an answer about `batch_id` rests only on verified entries; else the line to print.

    Provenance and the lineage up rest on the batch's own entry and its ancestors (all earlier); the
    lineage down rests on later entries too, so any unverified tail counts.
    """
    v = verified(led)
    if v.tail == 0:
        return None
    if not down:
        with led.engine.connect() as conn:
            seq = conn.execute(select(BATCHES.c.seq).where(BATCHES.c.batch_id == batch_id)).scalar()
        if seq is not None and v.covers(int(seq)):
            return None
    return v.note()
