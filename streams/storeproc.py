"""The sequence stage's store work, in the worker's process or in one helper process (issue 11).

The sequencer agent's own work is small: take verified records, route what the store decided. The store
work behind it (unpack the records, the append rules, provenance, the Merkle tree, SQLite or PostgreSQL)
is about two thirds of a worker's event loop when it runs there: measured on the development VM with a
30k backlog, the event loop was the limit at 3.2k events/s while the verify helper idled half the time.
With ``store_process`` on (``BATTERYLEDGER_STORE_PROCESS``, the default) the worker that holds
material-events-verified runs that work in one helper process, so its event loop (Faust, the Kafka
clients), the verify helper and the store each get a core's share.

:class:`LocalSequencer` is the store work itself: it opens the writer (a :class:`ledger.core.Ledger` and
a :class:`ledger.intake.Sequencer`) on first use, appends batches (isolating an event that breaks a batch
as an ``internal_error`` rejection), expires parked events and signs checkpoints. It returns only what
the agent routes (:class:`Decided`: counts, the sequencer's rejections with their original bytes), so
little crosses the process boundary. :class:`StoreProcess` runs one LocalSequencer in a helper process
(``spawn``; the store URL and the operator key's *path* cross its pipe, never a key on a command line).

Failures: a store that cannot be written raises from either host, and the agent retries with back-off
and acks nothing meanwhile (the writer re-reads its state from the store first). Transactions of the
call that committed before the failure stay committed; the retried call skips their records and reports
what they decided (their counts, their rejections for the rejected topic) with its own. A helper that dies (an
OOM kill, a SIGKILL) loses only its open transaction, which the store rolls back; the call raises, a new
helper starts and reads the consumed offsets from the store, so the batch is appended exactly once when
it is retried. A helper exits within about a second when its worker dies (it watches its parent), so
it never holds the store's writer lock for a worker that is gone.

Nothing here imports Faust.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, fields
from datetime import timedelta
from pathlib import Path
from typing import Any

from ledger.core import Ledger
from ledger.intake import HopKey, SequencedBatch, Sequencer, VerifiedRecord
from schemas.reasons import Reason
from schemas.signing import DecodedEvent, load_private_key
from streams.memory import freeze_heap
from streams.verifypool import helper_setup

__all__ = ["Decided", "LocalSequencer", "Rejected", "SequenceCounts", "StoreProcess"]

log = logging.getLogger("batteryledger.storeproc")

#: A decision the agent publishes on the rejected topic: (original bytes, source, reason, detail, event id).
Rejected = tuple[bytes, str, str | None, str | None, str | None]


@dataclass
class SequenceCounts:
    """What the sequence stage decided, counted (the agent's Counters carries these plus its own)."""

    appended: int = 0
    duplicates: int = 0
    parked: int = 0
    sequence_rejected: int = 0
    recorded_verify_rejections: int = 0
    skipped: int = 0
    redeliveries: int = 0
    internal_errors: int = 0

    def add(self, other: SequenceCounts) -> None:
        """Add `other`'s sequence-stage counts to these."""
        for f in fields(SequenceCounts):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


@dataclass
class Decided(SequenceCounts):
    """What one sequencer call decided, in the form the agent routes it."""

    #: sources of every event decided (the agent drops them from its decoded-event cache)
    sources: list[str] = field(default_factory=list)
    #: rejections decided by the sequencer, for the rejected topic (verify-stage ones are there already)
    rejections: list[Rejected] = field(default_factory=list)
    #: entries in the ledger after the call (the agent checkpoints every checkpoint_every entries)
    size: int = 0

    def add_batch(self, batch: SequencedBatch) -> None:
        """Count and keep what `batch` decided (its events themselves are not kept)."""
        self.skipped += batch.skipped_offsets
        self.redeliveries += batch.redeliveries
        for it, res in batch.results:
            self.sources.append(it.source)
            if res.status == "appended":
                self.appended += 1
            elif res.status == "duplicate":
                self.duplicates += 1
            elif res.status == "parked":
                self.parked += 1
            elif it.error is not None:
                self.recorded_verify_rejections += 1
            else:
                self.sequence_rejected += 1
        self.rejections.extend(
            (it.raw, it.source, res.reason, res.detail, res.event_id) for it, res in batch.rejected()
        )
        self.rejections.extend(batch.recorded_rejections)  # of skipped records: published again


@dataclass
class Checkpointed:
    """A checkpoint made (note None: nothing new to sign) and the ledger's size and origin."""

    note: str | None
    size: int
    origin: str


class LocalSequencer:
    """The sequence stage's store work in this process (see the module's docstring)."""

    def __init__(
        self, store: str, consumer: str, hop_key: HopKey, max_batch: int, operator_key: Path | None
    ) -> None:
        self.store = store
        self.consumer = consumer
        self.hop_key = hop_key
        self.max_batch = max_batch
        self.operator_key = operator_key
        self.writer: Ledger | None = None
        self.sequencer: Sequencer | None = None
        self.needs_reload = False
        #: what transactions committed in a call that then failed (the store went away) decided: routed
        #: with the next call, as the retried call skips the records they covered
        self.carried: Decided | None = None
        #: entries when the writer was opened, and the size of the newest checkpoint then
        self.opened_at: tuple[int, int] = (0, 0)

    def _open(self) -> Sequencer:
        if self.writer is None:
            key = load_private_key(self.operator_key) if self.operator_key is not None else None
            self.writer = Ledger(self.store, operator_key=key)
            self.sequencer = Sequencer(self.writer, self.consumer, self.hop_key, max_items=self.max_batch)
            stats = self.writer.stats()
            self.opened_at = (self.writer.size, int(stats["latest_checkpoint_size"] or 0))
            self.needs_reload = False
        elif self.needs_reload:
            self.writer.refresh_registry()  # head, registry and parked index from the store
            assert self.sequencer is not None
            self.sequencer.reload()
            self.needs_reload = False
        assert self.sequencer is not None
        return self.sequencer

    async def call(self, name: str, *args: Any) -> Any:
        """Run `name`(*args) here (the interface StoreProcess offers across processes)."""
        return getattr(self, name)(*args)

    def reload(self) -> None:
        """Re-read the writer's state from the store before the next call (after a reassignment, or a
        failed call)."""
        self.needs_reload = True

    def opened(self) -> tuple[int, int]:
        """(entries, size of the newest checkpoint), opening the writer if need be."""
        self._open()
        return self.opened_at

    def process(
        self, records: Sequence[VerifiedRecord], known: Mapping[str, DecodedEvent] | None = None
    ) -> Decided:
        """Append the records' events (Sequencer.process_groups: each transaction's events are routed
        and let go as it commits, so a call holds one transaction's events, however many records it
        was given). Records a transaction failed on are appended again one event per transaction:
        an event that breaks the batch alone becomes an ``internal_error`` rejection, and the parts
        committed before it keep their outcomes. Raises only if the store itself fails (the agent
        retries; what the call committed before that is routed with the next call)."""
        decided, self.carried = self.carried or Decided(), None
        try:
            seq = self._open()
            done = 0
            try:
                for part in seq.process_groups(records, known=known):
                    decided.add_batch(part)
                    done += part.records
            except Exception:
                log.exception(
                    "append of %d records failed; retrying the %d not committed one by one",
                    len(records),
                    len(records) - done,
                )
                rest = self._one_by_one(seq, records[done:], known)
                decided.add_batch(rest)
                decided.internal_errors += sum(
                    1
                    for it, _ in rest.results
                    if it.error is not None and it.error.reason == Reason.INTERNAL_ERROR
                )
        except Exception:
            self.needs_reload = True
            self.carried = decided
            raise
        decided.size = seq.ledger.size
        if decided.rejections:  # a carried one may be among its records' recorded ones: each once
            once: dict[tuple[str, str | None], Rejected] = {}
            for r in decided.rejections:
                once.setdefault((r[1], r[4]), r)
            decided.rejections = list(once.values())
        return decided

    @staticmethod
    def _one_by_one(
        seq: Sequencer, records: Sequence[VerifiedRecord], known: Mapping[str, DecodedEvent] | None
    ) -> SequencedBatch:
        total = SequencedBatch()
        for rec in records:
            total.add(seq.process_isolated(rec, known))  # raises only if the store itself is down
        return total

    def expire(self, max_age_s: float) -> list[Rejected]:
        """Reject parked events older than `max_age_s` (``parents_timeout``)."""
        try:
            expired = self._open().expire(timedelta(seconds=max_age_s))
        except Exception:
            self.needs_reload = True
            raise
        return [(raw, source, res.reason, res.detail, res.event_id) for raw, source, res in expired]

    def checkpoint(self, if_grown_since: int = -1) -> Checkpointed | None:
        """Sign a checkpoint when the ledger holds more than `if_grown_since` entries (None when the
        writer has no operator key or the ledger has not grown)."""
        if self.operator_key is None:
            return None
        writer = self._open().ledger
        if writer.size <= if_grown_since:
            return None
        return Checkpointed(writer.make_checkpoint(), writer.size, writer.origin)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
            self.sequencer = None


# ------------------------------------------------------------------------------------ helper side

_LOCAL: LocalSequencer | None = None


def _start(args: tuple[Any, ...], parent: int) -> None:
    global _LOCAL
    helper_setup(parent)
    _LOCAL = LocalSequencer(*args)
    freeze_heap()  # after the imports: see streams/memory.py


def _call(name: str, args: tuple[Any, ...]) -> Any:
    assert _LOCAL is not None, "store process not initialised"
    return getattr(_LOCAL, name)(*args)


def _pid() -> int:
    return os.getpid()


# ------------------------------------------------------------------------------------ worker side


class StoreProcess:
    """One helper process running a :class:`LocalSequencer`; the same calls, awaited."""

    def __init__(
        self, store: str, consumer: str, hop_key: HopKey, max_batch: int, operator_key: Path | None
    ) -> None:
        self._args = (store, consumer, hop_key, max_batch, operator_key)
        self._pool: ProcessPoolExecutor | None = None
        self.restarts = 0

    def start(self) -> None:
        """Start the helper (spawn: about a second) without waiting for it; calls queue meanwhile."""
        if self._pool is not None:
            return
        self._pool = ProcessPoolExecutor(
            max_workers=1,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start,
            initargs=(self._args, os.getpid()),
        )
        self._pool.submit(_pid)  # starts the process now, not at the first batch

    def pid(self) -> int | None:
        """The helper's process id (for tests and `ps`)."""
        if self._pool is None:
            return None
        pids = [p.pid for p in getattr(self._pool, "_processes", {}).values() if p.pid is not None]
        return pids[0] if pids else None

    async def call(self, name: str, *args: Any) -> Any:
        """Run LocalSequencer.`name`(*args) in the helper. If the helper died, a new one is started and
        the error is raised: the caller retries, and the new helper reads its state from the store."""
        self.start()
        assert self._pool is not None
        try:
            return await asyncio.wrap_future(self._pool.submit(_call, name, args))
        except BrokenProcessPool:
            log.warning("the store process is gone (killed?); starting a new one")
            self.restarts += 1
            self.close()
            self.start()
            raise

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
