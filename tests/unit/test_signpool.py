"""streams.signpool: the Publisher's signing helpers (real spawned processes, real keys, no Kafka).

What the helpers build must be byte for byte what the Publisher builds itself, in the same order; an
event that cannot be signed ends the run after the ones before it; a helper that dies is a clear
PublishError, never a silent gap; and the helpers never outlive the process that started them.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from schemas.events import parse_event
from schemas.signing import generate_key, sign_object
from streams.publisher import MessageBuilder, PublishError
from streams.signpool import SignPool
from tests.unit.test_verifypool import assert_helpers_die_with_their_worker, wait_gone

FID = "mine-sign-test"


def _event(i: int, fid: str = FID, **extra: Any) -> dict[str, Any]:
    return {
        "kind": "batch.extracted",
        "facility_id": fid,
        "time": f"2025-03-01T00:{i // 60 % 60:02d}:{i % 60:02d}Z",
        "outputs": [{"batch_id": f"SIGN-{i}", "material": "spodumene_concentrate", "kg": "1000.5"}],
        "site": f"pit {i} · Grünbühl 😀",
        **extra,
    }


def _wire(built: list[tuple[str, Any]]) -> list[tuple[str, bytes, bytes | None, list[Any]]]:
    return [(eid, m.value, m.key, list(m.headers)) for eid, m in built]


@pytest.fixture(scope="module")
def key() -> Any:
    return generate_key()


def test_helpers_build_the_same_messages_in_the_same_order(key: Any) -> None:
    events: list[Any] = [_event(i) for i in range(1100)]
    events[7] = parse_event({**_event(7), "spec": "batteryledger/1"})  # a model
    events[600] = sign_object({**_event(600), "spec": "batteryledger/1"}, key)[0]  # signed elsewhere
    here, failure = MessageBuilder(key).build_many((FID, e) for e in events)
    assert failure is None
    pool = SignPool(2, key, structured=False)
    try:
        chunks = list(pool.chunks(iter(events), 256, lambda: FID))
    finally:
        pool.close()
    assert [len(c) for c, _ in chunks] == [256, 256, 256, 256, 76]
    assert all(f is None for _, f in chunks)
    assert _wire([m for c, _ in chunks for m in c]) == _wire(here)


def test_the_facility_is_read_as_each_event_is_taken(key: Any) -> None:
    """The CLI signs a file of several facilities' events with one key, switching the Publisher's
    facility before each: each event must be signed as the facility current when it was taken."""
    current = [FID]

    def events() -> Iterator[dict[str, Any]]:
        for i in range(600):
            current[0] = f"mine-{i % 3}"
            yield _event(i, fid=current[0])

    pool = SignPool(1, key, structured=False)
    try:
        chunks = list(pool.chunks(events(), 100, lambda: current[0]))
    finally:
        pool.close()
    assert sum(len(c) for c, _ in chunks) == 600 and all(f is None for _, f in chunks)


def test_an_event_that_cannot_be_signed_ends_the_run_after_the_ones_before_it(key: Any) -> None:
    events = [_event(i) for i in range(1000)]
    events[650] = _event(650, outputs=[{"batch_id": "X", "material": "ore", "kg": 1.5}])  # float kg
    pool = SignPool(2, key, structured=False)
    try:
        chunks = list(pool.chunks(iter(events), 100, lambda: FID))
    finally:
        pool.close()
    *good, (last, failure) = chunks
    assert all(f is None for _, f in good) and len(good) == 6
    assert isinstance(failure, PublishError) and "not valid" in str(failure)
    assert sum(len(c) for c, _ in good) + len(last) == 650  # exactly the events before it


def test_a_failing_iterable_still_sends_the_events_before_it(key: Any) -> None:
    def events() -> Iterator[dict[str, Any]]:
        for i in range(250):
            yield _event(i)
        raise OSError("the file went away")

    pool = SignPool(1, key, structured=False)
    try:
        chunks = list(pool.chunks(events(), 100, lambda: FID))
    finally:
        pool.close()
    assert [len(c) for c, _ in chunks] == [100, 100, 50, 0]
    assert isinstance(chunks[-1][1], OSError)


@pytest.mark.parametrize("noticed", [False, True])
def test_a_killed_helper_is_a_publish_error_not_a_gap(key: Any, noticed: bool) -> None:
    """Killed while a chunk is signed, or before (the pool already knows it is broken)."""
    pool = SignPool(1, key, structured=False)
    try:
        [pid] = pool.start()
        os.kill(pid, signal.SIGKILL)
        if noticed:
            wait_gone([pid], timeout=10)
            time.sleep(0.5)  # the executor's manager thread marks the pool broken
        chunks = list(pool.chunks(iter([_event(i) for i in range(300)]), 100, lambda: FID))
    finally:
        pool.close()
    assert chunks == [([], chunks[0][1])]
    assert isinstance(chunks[0][1], PublishError) and "signing helper died" in str(chunks[0][1])
    assert pool.closed  # the Publisher starts new helpers at its next publish_many


def test_signing_helpers_do_not_outlive_their_publisher(tmp_path: Path) -> None:
    assert_helpers_die_with_their_worker(
        tmp_path,
        """
        from schemas.signing import generate_key
        from streams.signpool import SignPool
        pool = SignPool(2, generate_key(), structured=False)
        print(*pool.start(), flush=True)
        """,
    )
