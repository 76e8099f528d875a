"""The verify stage's checks in helper processes, so that one worker uses more than one core (issue 11).

A worker is one Python process, and the verify stage is the larger half of its CPU: Ed25519, the
CloudEvents unwrap, decoding and the schema cost about 130 µs an event on the development VM, against
about 120 µs for the sequencer's append. With ``verify_processes`` = N >= 1
(``BATTERYLEDGER_VERIFY_PROCESSES``, default 1) the verify agent hands each raw batch, split in N parts,
to N helper processes and awaits what they return; meanwhile the worker's event loop goes on fetching
and runs the sequencer. N = 0 checks in the worker's own process.

What crosses the process boundary: in, ``(headers, value, source)`` per message; out, a
:class:`CheckedBatch` with the finished verified-topic records (packed and authenticated with the worker
key by :func:`ledger.intake.pack_verified`) and the rejected-topic records. The worker key reaches a
helper through its pipe at start-up, never on a command line. A helper keeps its own read-only copy of
the registry (a :class:`ledger.core.Ledger` on the same store), refreshed the way the worker's is:
every ``registry_refresh_s``, and at most that often on an unknown facility or key.

Helpers are started with the ``spawn`` method (the worker has threads; a fork would copy their locks)
when the first raw batch comes. Until they have started (about a second) and after a helper dies (an
OOM kill, a SIGKILL), batches are checked in the worker's own process and a fresh pool is started:
nothing is lost, because the raw offsets are committed only after the broker acknowledged the records.
A helper whose worker dies exits within about a second: it watches its parent.

Nothing here imports Faust: a helper imports only this module and the ledger's core.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

from ledger.core import Incoming, Ledger
from ledger.intake import (
    Headers,
    HopKey,
    KeyLookup,
    fit_for_forwarding,
    pack_verified,
    rejection_headers,
    verify_message,
)
from schemas.reasons import EventError, Reason
from streams.memory import freeze_heap, tune_malloc

__all__ = [
    "MAX_REJECTED_VALUE_BYTES",
    "CheckedBatch",
    "RawMessage",
    "VerifyPool",
    "check_batch",
    "helper_setup",
    "rejection_record",
]

log = logging.getLogger("batteryledger.verifypool")

#: Largest rejected-topic record value: a larger original keeps its first bytes there (header
#: bl_truncated carries the full length); the store keeps what the verified hop carried.
MAX_REJECTED_VALUE_BYTES = 900 * 1024
#: How often a helper checks that the worker that started it is still there.
PARENT_WATCH_S = 0.5
#: Pools in a row that may fail to start before the worker gives up on helpers and checks everything
#: itself (a helper that cannot import, a store it cannot open): logged once, never a stopped worker.
MAX_FAILED_STARTS = 3

#: One raw message as the verify stage sees it: its headers, its bytes, its source position.
RawMessage = tuple[Headers, bytes | None, str]
Record = tuple[list[tuple[str, bytes]], bytes]


@dataclass
class CheckedBatch:
    """What the verify stage made of a batch of raw messages, ready to send."""

    #: verified-topic records (headers, value), in the order of the raw messages
    records: list[Record] = field(default_factory=list)
    #: rejected-topic records (value, headers): the plants' feed of verify-stage rejections
    rejections: list[tuple[bytes, list[tuple[str, bytes]]]] = field(default_factory=list)
    verified: int = 0
    #: the outcomes themselves (decoded events included); only when checked in the worker's process
    outcomes: list[Incoming] = field(default_factory=list)


def rejection_record(raw: bytes, headers: list[tuple[str, bytes]]) -> tuple[bytes, list[tuple[str, bytes]]]:
    """A rejected-topic record: the original bytes, cut to MAX_REJECTED_VALUE_BYTES (bl_truncated says)."""
    if len(raw) > MAX_REJECTED_VALUE_BYTES:
        headers = [*headers, ("bl_truncated", str(len(raw)).encode())]
        raw = raw[:MAX_REJECTED_VALUE_BYTES]
    return raw, headers


def check_one(headers: Headers, value: bytes | None, source: str, registry: KeyLookup) -> Incoming:
    try:
        incoming = verify_message(headers, value, registry, source=source)
    except Exception as exc:  # verify_message never raises; belt and braces
        incoming = Incoming(
            raw=bytes(value or b""),
            source=source,
            error=EventError(Reason.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}"),
        )
    return fit_for_forwarding(incoming)


def check_batch(
    messages: Sequence[RawMessage],
    registry: KeyLookup,
    hop_key: HopKey,
    topic: str,
    *,
    on_unknown: Callable[[], None] | None = None,
    keep_outcomes: bool = False,
) -> CheckedBatch:
    """Verify `messages`; pack them as verified-topic records for `topic`; build the rejection records.

    `on_unknown` is called after an event whose facility or key this registry copy does not know (it
    passes on unchecked, for the sequencer to decide; the caller may re-read its registry)."""
    outcomes = []
    for headers, value, source in messages:
        incoming = check_one(headers, value, source, registry)
        if on_unknown is not None and incoming.error is None and not incoming.signature_checked:
            on_unknown()
        outcomes.append(incoming)
    out = CheckedBatch(records=pack_verified(outcomes, hop_key, topic))
    for it in outcomes:
        if it.error is None:
            out.verified += 1
            continue
        out.rejections.append(
            rejection_record(
                it.raw,
                rejection_headers(
                    it.error.reason.value,
                    it.error.detail,
                    source=it.source,
                    event_id=it.decoded.event_id if it.decoded else None,
                    stage="verify",
                ),
            )
        )
    if keep_outcomes:
        out.outcomes = outcomes
    return out


# ------------------------------------------------------------------------------------ helper side


class _Helper:
    """The state of one helper process: a registry copy and what it needs to pack records."""

    def __init__(self, store: str, hop_key: HopKey, topic: str, refresh_s: float) -> None:
        self.reader = Ledger(store)
        self.hop_key = hop_key
        self.topic = topic
        self.refresh_s = refresh_s
        self.last_refresh = time.monotonic()

    def refresh(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.last_refresh >= self.refresh_s:
            self.last_refresh = now
            try:
                self.reader.refresh_registry()
            except Exception:
                log.exception("verify helper could not re-read the registry")

    def check(self, messages: Sequence[RawMessage]) -> CheckedBatch:
        self.refresh()
        return check_batch(messages, self.reader.registry, self.hop_key, self.topic, on_unknown=self.refresh)


_HELPER: _Helper | None = None


def _watch_parent(parent: int) -> None:
    while True:
        time.sleep(PARENT_WATCH_S)
        if os.getppid() != parent:
            os._exit(0)  # the worker is gone: nobody will read what this process returns


def helper_setup(parent: int) -> None:
    """What every helper process of a worker does first (the verify helpers here, the store process in
    streams/storeproc.py): malloc settings, exit when the worker `parent` is gone, quiet SQLAlchemy."""
    tune_malloc()
    threading.Thread(target=_watch_parent, args=(parent,), name="watch-worker", daemon=True).start()
    logging.getLogger("sqlalchemy").setLevel(logging.WARNING)


def _start_helper(store: str, hop_key: HopKey, topic: str, refresh_s: float, parent: int) -> None:
    global _HELPER
    helper_setup(parent)
    _HELPER = _Helper(store, hop_key, topic, refresh_s)
    freeze_heap()  # after the imports and the registry: see streams/memory.py


def _helper_check(messages: Sequence[RawMessage]) -> CheckedBatch:
    assert _HELPER is not None, "helper not initialised"
    return _HELPER.check(messages)


def _helper_pid() -> int:
    return os.getpid()


# ------------------------------------------------------------------------------------ worker side


class VerifyPool:
    """The worker's helper processes. :meth:`check` returns None when the caller must check the batch
    itself: while the helpers start, and for the batch during which the pool broke."""

    def __init__(self, size: int, store: str, hop_key: HopKey, topic: str, refresh_s: float) -> None:
        self.size = size
        self._args = (store, hop_key, topic, refresh_s)
        self._pool: ProcessPoolExecutor | None = None
        self._ready: list[Future[int]] = []
        self.restarts = 0
        self.fallbacks = 0
        self.failed_starts = 0

    @property
    def enabled(self) -> bool:
        return self.size > 0

    def start(self) -> None:
        """Start the helpers (spawn: a second or so) without waiting for them."""
        if self._pool is not None or self.size < 1:
            return
        ctx = multiprocessing.get_context("spawn")
        self._pool = ProcessPoolExecutor(
            max_workers=self.size,
            mp_context=ctx,
            initializer=_start_helper,
            initargs=(*self._args, os.getpid()),
        )
        # one call per helper: the pool starts them all, and each answers once initialised
        self._ready = [self._pool.submit(_helper_pid) for _ in range(self.size)]

    @property
    def ready(self) -> bool:
        return self._pool is not None and all(f.done() and f.exception() is None for f in self._ready)

    def pids(self) -> list[int]:
        """The helpers' process ids (for tests and `ps`)."""
        if self._pool is None:
            return []
        return sorted(p.pid for p in getattr(self._pool, "_processes", {}).values() if p.pid is not None)

    async def check(self, messages: Sequence[RawMessage]) -> CheckedBatch | None:
        if self.size < 1 or not messages:
            return None
        self.start()
        if not self.ready:
            failed = [f.exception() for f in self._ready if f.done() and f.exception() is not None]
            if failed:
                self.failed_starts += 1
                if self.failed_starts >= MAX_FAILED_STARTS:
                    log.error(
                        "verify helpers failed to start %d times (%s: %s); this worker checks every batch "
                        "itself from now on",
                        self.failed_starts,
                        type(failed[0]).__name__,
                        failed[0],
                    )
                    self.close()
                    self.size = 0
                else:
                    self._broken(f"a helper failed to start: {type(failed[0]).__name__}: {failed[0]}")
            self.fallbacks += 1
            return None
        self.failed_starts = 0
        assert self._pool is not None
        parts = _split(messages, self.size)
        try:
            futures = [asyncio.wrap_future(self._pool.submit(_helper_check, part)) for part in parts]
            done = await asyncio.gather(*futures)
        except BrokenProcessPool as exc:
            self._broken(f"{type(exc).__name__}: {exc}")
            self.fallbacks += 1
            return None
        except Exception:
            log.exception("a verify helper failed on a batch of %d; checking it in the worker", len(messages))
            self.fallbacks += 1
            return None
        if len(done) == 1:
            return done[0]
        merged = CheckedBatch()
        for part_out in done:
            merged.records.extend(part_out.records)
            merged.rejections.extend(part_out.rejections)
            merged.verified += part_out.verified
        return merged

    def _broken(self, why: str) -> None:
        log.warning("verify helpers lost (%s): checking in the worker while a new pool starts", why)
        self.restarts += 1
        self.close()
        self.start()

    def close(self) -> None:
        pool, self._pool, self._ready = self._pool, None, []
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


def _split(messages: Sequence[RawMessage], parts: int) -> list[Sequence[RawMessage]]:
    if parts <= 1 or len(messages) < 2 * parts:
        return [messages]
    step = -(-len(messages) // parts)
    return [messages[i : i + step] for i in range(0, len(messages), step)]


def raw_messages(messages: Sequence[Any], source_of: Callable[[str, int, int], str]) -> list[RawMessage]:
    """Faust/aiokafka messages -> what crosses to a helper (plain, picklable values)."""
    out: list[RawMessage] = []
    for m in messages:
        headers = m.headers
        if headers is not None and not isinstance(headers, list | tuple | dict):
            headers = list(headers)
        out.append((headers, m.value, source_of(m.topic, m.partition, m.offset)))
    return out
