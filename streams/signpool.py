"""Signing helpers for `Publisher.publish_many` (issue 11: the Publisher's throughput).

A Publisher's work per event is about 60 us of validation, canonical JSON, the Ed25519 signature and the
CloudEvents headers (`publisher.MessageBuilder`), then kafka-python's produce and ack, about as much
again, all on one core. With ``Publisher(..., sign_processes=N)`` the first part runs in N helper
processes (``spawn``) while the Publisher's own process only sends: chunks of events go to the helpers
in order, up to two per helper in flight, and their messages come back and are sent in the same order,
so `publish_many` keeps its contract (every ack reported in order; the first event that cannot be
signed raises after every event before it was acknowledged).

The key: each helper gets the private key's 32-byte seed through its own pipe from the Publisher's
process (never on a command line or in a file) and signs with it; the bytes are the same as when the
Publisher signs itself (Ed25519 is deterministic). A helper exits within about a second of its
Publisher's process dying. Starting the helpers costs about a second, once per Publisher: worth it for
bulk publishing (thousands of events), not for a few.

Nothing here imports Faust.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import BaseModel

from schemas.cloudevents import WireMessage
from schemas.events import event_to_json_obj
from streams.publisher import EventLike, MessageBuilder, PublishError

__all__ = ["SignPool"]

Built = tuple[list[tuple[str, WireMessage]], Exception | None]

#: chunks in flight per helper: one being signed, one waiting, so a helper never idles between chunks
PER_HELPER = 2

_BUILDER: MessageBuilder | None = None


def _start(seed: bytes, structured: bool, parent: int) -> None:
    global _BUILDER
    from streams.verifypool import helper_setup

    helper_setup(parent)
    _BUILDER = MessageBuilder(Ed25519PrivateKey.from_private_bytes(seed), structured)


def _build(items: list[tuple[str, Any]]) -> Built:
    assert _BUILDER is not None, "signing helper not initialised"
    return _BUILDER.build_many(items)


def _pid() -> int:
    return os.getpid()


def _portable(event: EventLike) -> Any:
    """What crosses to a helper: bytes as they are, a model as its JSON object, a mapping as a dict."""
    if isinstance(event, bytes):
        return event
    if isinstance(event, BaseModel):
        return event_to_json_obj(event)
    return dict(event)


class SignPool:
    """`processes` helpers building one key's messages (see the module's docstring)."""

    def __init__(self, processes: int, key: Ed25519PrivateKey, structured: bool) -> None:
        self.processes = max(1, processes)
        self._pool: ProcessPoolExecutor | None = ProcessPoolExecutor(
            max_workers=self.processes,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start,
            initargs=(key.private_bytes_raw(), structured, os.getpid()),
        )

    @property
    def closed(self) -> bool:
        return self._pool is None

    def pids(self) -> list[int]:
        """The helpers' process ids (for tests)."""
        if self._pool is None:
            return []
        return [p.pid for p in getattr(self._pool, "_processes", {}).values() if p.pid is not None]

    def start(self) -> list[int]:
        """Start every helper now and return their process ids."""
        assert self._pool is not None, "closed"
        for fut in [self._pool.submit(_pid) for _ in range(self.processes)]:
            fut.result()
        return self.pids()

    def chunks(
        self, events: Iterator[EventLike], size: int, facility_id: Callable[[], str]
    ) -> Iterator[Built]:
        """Messages of `events` in chunks of `size`, in order, signed in the helpers; a chunk with a
        failure is the last. `facility_id()` is read as each event is taken (the CLI changes it per
        event)."""
        if self._pool is None:
            raise PublishError("the signing helpers are closed")
        pool = self._pool
        pending: deque[Future[Built] | Exception] = deque()
        more = True

        def feed() -> None:
            nonlocal more
            while more and len(pending) < PER_HELPER * self.processes:
                items: list[tuple[str, Any]] = []
                failure: Exception | None = None
                try:
                    while len(items) < size:
                        ev = next(events, _END)
                        if ev is _END:
                            more = False
                            break
                        items.append((facility_id(), _portable(ev)))
                except Exception as exc:  # the iterable failed: the events before it still go
                    failure, more = exc, False
                if items:
                    try:
                        pending.append(pool.submit(_build, items))
                    except (BrokenProcessPool, RuntimeError):  # died before (or closed meanwhile)
                        failure, more = _died(), False
                if failure is not None:
                    pending.append(failure)

        try:
            feed()
            while pending:
                head = pending.popleft()
                if isinstance(head, Exception):
                    if isinstance(head, _Died):
                        self.close()
                    yield [], head
                    return
                try:
                    built, failure = head.result()
                except BrokenProcessPool:
                    self.close()
                    yield [], _died()
                    return
                if failure is not None:
                    yield built, failure
                    return
                feed()  # the next chunk is signed while this one is sent
                yield built, None
        finally:
            for rest in pending:  # after a failure: what was queued behind it is dropped, not sent
                if isinstance(rest, Future):
                    rest.cancel()

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


_END: Any = object()


class _Died(PublishError):
    pass


def _died() -> PublishError:
    return _Died("a signing helper died (killed?): the events from here on were not sent")
