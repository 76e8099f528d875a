"""Full verification of a ledger store: chain, Merkle tree, checkpoints, signatures.

Steps (each names the first entry that does not match):
 1. entries are numbered 0..n-1 with no gap (a deleted or inserted row shows here);
 2. each entry's leaf hash is SHA-256(0x00 || stored bytes) (edited bytes show here);
 3. each entry hash is SHA-256(previous entry hash || leaf), from the genesis (reordered rows show here);
 4. the Merkle root recomputed from the leaves equals every stored checkpoint's root, each checkpoint's
    signature verifies under the operator key, and the stored tree nodes give the same head root;
 5. every event's signature verifies under a key its facility had at the event's time (both cores).
Steps 1-4 stream the entries once; step 5 runs in worker processes on the same chunks.
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Engine

from ledger import chain, tree
from ledger.checkpoint import Checkpoint, CheckpointError, NoteError, open_note
from ledger.merkle import node_hash
from ledger.registry import Registry
from ledger.store import CHECKPOINTS, ENTRIES, fetch_nodes, placeholder
from schemas.events import REGISTRY_KINDS
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
            "SELECT seq, kind, data, leaf_hash, entry_hash FROM entries "
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
) -> VerifyReport:
    report = VerifyReport()
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
            for seq, _kind, raw_data, raw_leaf, raw_entry_hash in rows:
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
                sig_rows.append((seq, data))
            # 4a. every stored Merkle node this chunk completes equals the one recomputed from the leaves
            _check_nodes(engine, computed, report)
            if pool is not None:
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
        report.signatures_checked = report.entries if signatures else 0
        report.checkpoints = len(checkpoints)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    report.errors.sort(key=lambda e: (e[0] is None, e[0] or 0))
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
