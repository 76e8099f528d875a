"""streams.storeproc: the sequence stage's store work in the worker or in a helper process (real spawned
processes, real signed events, real stores).

The store process must decide exactly what the worker's own process decides, lose and double nothing
when it is SIGKILLed, and never outlive its worker (it would hold the store's writer lock for nobody).
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from batteryledger.sample import DemoChain, demo_chain
from ledger.core import Ledger
from ledger.intake import H_HOP_MAC, HopKey, Sequencer, VerifiedRecord
from ledger.rules import input_ids
from ledger.store import ENTRIES
from schemas.cloudevents import to_binary
from schemas.signing import decode, save_private_key
from streams.storeproc import Decided, LocalSequencer, StoreProcess
from streams.verifypool import check_batch
from tests.unit.test_verifypool import assert_helpers_die_with_their_worker, saved_hop_key, wait_gone

TOPIC = "material-events-verified"
KEY = HopKey.generate()


@pytest.fixture(scope="module")
def chain() -> DemoChain:
    return demo_chain()


def make_store(path: Path, chain: DemoChain) -> str:
    store = f"sqlite:///{path}"
    led = Ledger.init(store, operator_key=chain.operator_key, origin="test/storeproc")
    led.append([e.raw for e in chain.registry_events])
    led.close()
    return store


def records(chain: DemoChain, raws: list[bytes], store: str, first_offset: int = 0) -> list[VerifiedRecord]:
    """The verified-topic records a verify stage makes of `raws` (one record per three events)."""
    msgs: list[Any] = []
    for i, raw in enumerate(raws):
        try:
            m = to_binary(decode(raw))
            msgs.append((m.headers, m.value, f"material-events/0/{first_offset + i}"))
        except Exception:  # the malformed one arrives as it is
            msgs.append(([("ce_specversion", b"1.0")], raw, f"material-events/0/{first_offset + i}"))
    out: list[VerifiedRecord] = []
    with Ledger(store) as led:
        for j in range(0, len(msgs), 3):
            for headers, value in check_batch(msgs[j : j + 3], led.registry, KEY, TOPIC).records:
                out.append(VerifiedRecord(TOPIC, 0, first_offset + len(out), headers, value))
    return out


def appended_ids(store: str) -> list[str]:
    with Ledger(store) as led, led.engine.connect() as conn:
        return [r[0] for r in conn.execute(select(ENTRIES.c.event_id).order_by(ENTRIES.c.seq))]


def run(coro: Any) -> Any:
    return asyncio.run(coro)


@contextmanager
def store_process(store: str, operator_key: Path | None = None) -> Iterator[StoreProcess]:
    proc = StoreProcess(store, "test-sequencer", KEY, 2000, operator_key)
    try:
        proc.start()
        yield proc
    finally:
        proc.close()


def test_the_store_process_decides_what_the_worker_decides(tmp_path: Path, chain: DemoChain) -> None:
    raws = [e.raw for e in chain.chain_events] + [raw for _label, raw, _reason in chain.bad_events]
    here_store = make_store(tmp_path / "here.db", chain)
    there_store = make_store(tmp_path / "there.db", chain)
    here = LocalSequencer(here_store, "test-sequencer", KEY, 2000, None)
    decided_here = here.process(records(chain, raws, here_store))
    here.close()
    with store_process(there_store) as proc:
        decided_there = run(proc.call("process", records(chain, raws, there_store)))
        assert proc.pid() not in (None, os.getpid())
    assert isinstance(decided_there, Decided)
    assert decided_there == decided_here
    assert decided_here.appended == len(chain.chain_events) and decided_here.appended > 10
    # the sequencer's own rejections come back with their original bytes, for the rejected topic (the
    # verify stage's own, a forged signature, malformed bytes, are on it already)
    assert "overdrawn" in {r[2] for r in decided_here.rejections}
    assert decided_here.recorded_verify_rejections >= 2
    assert all(r[0] in raws for r in decided_here.rejections)
    assert appended_ids(there_store) == appended_ids(here_store)


def test_a_killed_store_process_loses_nothing_and_doubles_nothing(tmp_path: Path, chain: DemoChain) -> None:
    raws = [e.raw for e in chain.chain_events]
    store = make_store(tmp_path / "l.db", chain)
    recs = records(chain, raws, store)
    half = len(recs) // 2
    with store_process(store) as proc:
        first = run(proc.call("process", recs[:half]))
        old = proc.pid()
        assert old is not None
        os.kill(old, signal.SIGKILL)
        wait_gone([old], timeout=20)
        with pytest.raises(Exception):  # noqa: B017 - BrokenProcessPool: the agent retries
            run(proc.call("process", recs[half:]))
        assert proc.restarts == 1
        # the agent's retry: the same batch again, now with the records before it re-delivered too
        again = run(proc.call("process", recs))
        assert proc.pid() not in (None, old)
    assert again.skipped == half  # the new process read the consumed offsets from the store
    assert first.appended + again.appended == len(raws)
    ids = appended_ids(store)
    assert len(ids) == len(set(ids))  # nothing twice
    assert {decode(r).event_id for r in raws} <= set(ids)  # nothing lost


def test_expiry_and_checkpoints_run_in_the_store_process(tmp_path: Path, chain: DemoChain) -> None:
    store = make_store(tmp_path / "l.db", chain)
    key = tmp_path / "operator.key"
    save_private_key(chain.operator_key, key)
    orphan = next(e.raw for e in chain.chain_events if list(input_ids(decode(e.raw))))
    with store_process(store, key) as proc:
        decided = run(proc.call("process", records(chain, [orphan], store)))
        assert decided.parked == 1  # its parents never came
        [(raw, source, reason, _detail, event_id)] = run(proc.call("expire", 0.0))
        assert (raw, source, reason) == (orphan, "material-events/0/0", "parents_timeout")
        assert event_id == decode(orphan).event_id
        made = run(proc.call("checkpoint"))
        assert made is not None and made.note is not None and made.size == decided.size
        assert run(proc.call("checkpoint")).note is None  # already covered: nothing new to sign
    with Ledger(store) as led:
        assert led.stats()["latest_checkpoint_size"] == made.size


def test_a_store_process_does_not_outlive_its_worker(tmp_path: Path, chain: DemoChain) -> None:
    store = make_store(tmp_path / "l.db", chain)
    key = saved_hop_key(tmp_path)
    assert_helpers_die_with_their_worker(
        tmp_path,
        f"""
        from streams.storeproc import StoreProcess
        proc = StoreProcess({store!r}, "s", HopKey.load(Path({str(key)!r})), 2000, None)
        asyncio.run(proc.call("opened"))
        print(proc.pid(), flush=True)
        """,
    )


def test_an_event_that_breaks_a_batch_alone_becomes_an_internal_error(
    tmp_path: Path, chain: DemoChain, monkeypatch: pytest.MonkeyPatch
) -> None:
    raws = [e.raw for e in chain.chain_events[:6]]
    store = make_store(tmp_path / "l.db", chain)
    here = LocalSequencer(store, "test-sequencer", KEY, 2000, None)
    here.opened()
    assert here.writer is not None
    boom = decode(raws[2]).event_id
    real = here.writer.append

    def append(items: Any, **kw: Any) -> Any:  # a bug that this one event triggers
        if any(getattr(getattr(it, "decoded", None), "event_id", None) == boom for it in items):
            raise RuntimeError("a bug")
        return real(items, **kw)

    monkeypatch.setattr(here.writer, "append", append)
    decided = here.process(records(chain, raws, store))
    here.close()
    assert decided.internal_errors == 1 and decided.appended == 5
    [(raw, source, reason, _detail, _eid)] = decided.rejections
    assert (raw, source, reason) == (raws[2], "material-events/0/2", "internal_error")
    assert len(appended_ids(store)) == len(set(appended_ids(store)))


def test_a_call_routes_each_transaction_as_it_commits(
    tmp_path: Path, chain: DemoChain, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A call of many records is appended in transactions of `max_batch` events; when a later one
    breaks, the earlier ones stay committed *and counted*: their appends, their sequencer rejections
    (here an overdrawn batch, which must still reach the rejected topic) and nothing taken twice."""
    good = [e.raw for e in chain.chain_events]
    [overdrawn] = [raw for label, raw, reason in chain.bad_events if reason == "overdrawn"]
    raws = [*good[:-1], overdrawn, good[-1]]  # the overdrawn one in an early transaction, a bug in the last
    store = make_store(tmp_path / "l.db", chain)
    recs = records(chain, raws, store)  # three events per record
    here = LocalSequencer(store, "test-sequencer", KEY, 3, None)  # one record per transaction
    here.opened()
    assert here.writer is not None
    boom = decode(good[-1]).event_id
    real = here.writer.append

    def append(items: Any, **kw: Any) -> Any:
        if any(getattr(getattr(it, "decoded", None), "event_id", None) == boom for it in items):
            raise RuntimeError("a bug")
        return real(items, **kw)

    monkeypatch.setattr(here.writer, "append", append)
    decided = here.process(recs)
    here.close()
    assert decided.internal_errors == 1
    assert decided.appended == len(good) - 1 == len(appended_ids(store)) - 1 - len(chain.registry_events)
    assert decided.sequence_rejected == 1  # the overdrawn event (the broken one is an internal_error)
    assert sorted(r[2] or "" for r in decided.rejections) == ["internal_error", "overdrawn"]
    assert decided.skipped == 0 and decided.redeliveries == 0  # nothing committed was taken again
    assert sorted(decided.sources) == sorted(f"material-events/0/{i}" for i in range(len(raws)))


def test_process_groups_yields_each_transaction_before_expanding_the_next(
    tmp_path: Path, chain: DemoChain
) -> None:
    """The sequencer reads the records lazily: the first transaction is yielded after its own records
    (and the one that did not fit) were unpacked, not after all of them."""
    raws = [e.raw for e in chain.chain_events[:12]]
    store = make_store(tmp_path / "l.db", chain)
    recs = records(chain, raws, store)
    taken: list[int] = []

    def lazily() -> Iterator[VerifiedRecord]:
        for i, rec in enumerate(recs):
            taken.append(i)
            yield rec

    with Ledger(store) as led:
        seq = Sequencer(led, "test-sequencer", KEY, max_items=6)
        parts = seq.process_groups(lazily())  # type: ignore[arg-type]
        first = next(parts)
        assert [len(first.results), first.records, len(taken)] == [6, 2, 3]
        rest = list(parts)
    assert [p.records for p in rest] == [2] and len(taken) == len(recs) == 4
    assert sum(len(p.results) for p in [first, *rest]) == 12


def test_what_committed_before_the_store_failed_is_routed_with_the_retry(
    tmp_path: Path, chain: DemoChain, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store goes away after some transactions of a call committed: the call raises (the agent
    retries it), and the retried call, which skips the committed records, still reports what they
    decided: every append counted once, the overdrawn rejection routed once."""
    good = [e.raw for e in chain.chain_events]
    [overdrawn] = [raw for label, raw, reason in chain.bad_events if reason == "overdrawn"]
    raws = [*good[:-1], overdrawn, good[-1]]
    store = make_store(tmp_path / "l.db", chain)
    recs = records(chain, raws, store)
    here = LocalSequencer(store, "test-sequencer", KEY, 3, None)
    here.opened()
    assert here.writer is not None
    real, calls = here.writer.append, [0]

    def append(items: Any, **kw: Any) -> Any:  # the disk fills up after 15 transactions
        calls[0] += 1
        if calls[0] > 15:
            raise OSError("disk full")
        return real(items, **kw)

    monkeypatch.setattr(here.writer, "append", append)
    with pytest.raises(OSError):
        here.process(recs)
    monkeypatch.undo()  # the store is back
    decided = here.process(recs)  # the agent's retry
    here.close()
    assert decided.appended == len(good) == len(appended_ids(store)) - 1 - len(chain.registry_events)
    assert [r[2] for r in decided.rejections] == ["overdrawn"]
    assert decided.skipped == 15  # the records committed before the failure, not taken again
    assert sorted(decided.sources) == sorted(f"material-events/0/{i}" for i in range(len(raws)))


def test_a_restarted_sequencer_routes_the_rejections_of_records_it_skips(
    tmp_path: Path, chain: DemoChain
) -> None:
    """A worker that stopped after the store committed a batch and before it published the batch's
    rejections gets the records again after its restart and skips them (they are in the store): the
    sequencer's rejections recorded for them are routed again (the rejected topic is at-least-once,
    consumers dedupe on bl_source); the verify stage's own rejections are not (it published them)."""
    good = [e.raw for e in chain.chain_events]
    bad = {reason: raw for _label, raw, reason in chain.bad_events}
    raws = [*good, bad["overdrawn"], bad["bad_signature"]]
    store = make_store(tmp_path / "l.db", chain)
    recs = records(chain, raws, store)
    last = recs[-1]  # and a forged record (its MAC broken): an `unauthenticated` rejection, the sequencer's
    recs.append(
        VerifiedRecord(TOPIC, 0, last.offset + 1, [*last.headers[:-1], (H_HOP_MAC, b"00" * 32)], last.value)
    )
    first = LocalSequencer(store, "test-sequencer", KEY, 2000, None)
    decided = first.process(recs)
    first.close()  # ... and the worker dies before publishing decided.rejections
    assert sorted(r[2] or "" for r in decided.rejections) == ["overdrawn", "unauthenticated"]
    again = LocalSequencer(store, "test-sequencer", KEY, 2000, None)  # the restarted worker
    redone = again.process(recs)
    again.close()
    assert redone.skipped == len(recs) and redone.appended == 0
    assert redone.rejections == decided.rejections  # the same bytes, source, reason, detail, event id
    assert redone.rejections[0][0] == bad["overdrawn"]
