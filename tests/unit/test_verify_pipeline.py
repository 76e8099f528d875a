"""streams.agents.VerifyPipeline: batches are checked, handed to the producer and acked in overlapping
steps, each step strictly in the order the batches were taken.

The raw offsets Faust commits must never pass a record the broker did not acknowledge, and the
sequencer sees one partition's verified records in raw order when nothing fails: so batch N+1, even
when its check finishes first, is handed to the producer only after batch N, and every raw message is
acked only after the broker acknowledged the records carrying it. Batch N+1 need not wait for N's
acknowledgement before it is handed over (that wait held a worker to one batch per broker round trip).
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from streams.agents import Counters, LedgerAgents, PendingSend, VerifyPipeline
from streams.verifypool import CheckedBatch


class FakeEvent:
    def __init__(self, n: int) -> None:
        self.message = n


class FakeStream:
    def __init__(self, log: list[tuple[str, int]]) -> None:
        self.log = log

    async def ack(self, event: FakeEvent) -> bool:
        self.log.append(("ack", event.message))
        return True


class FakeState:
    """check_raw takes `delays[first]`; the broker acknowledges a batch `broker[first]` after it is
    handed over; `fail` batches raise when handed over (a routing bug)."""

    def __init__(
        self,
        log: list[tuple[str, int]],
        delays: dict[int, float],
        fail: set[int] = frozenset(),
        broker: dict[int, float] | None = None,
    ) -> None:
        self.log = log
        self.delays = delays
        self.fail = fail
        self.broker = broker or {}
        self.counters = Counters()

    async def check_raw(self, messages: list[int]) -> CheckedBatch:
        await asyncio.sleep(self.delays[messages[0]])
        self.log.append(("checked", messages[0]))
        return CheckedBatch(records=[([], bytes(messages))])

    async def send(self, checked: CheckedBatch) -> list[PendingSend]:
        first = checked.records[0][1][0]
        if first in self.fail:
            raise RuntimeError("a bug in routing")
        self.log.append(("handed", first))

        async def broker_ack() -> None:
            await asyncio.sleep(self.broker.get(first, 0.0))
            self.log.append(("broker-ack", first))

        return [PendingSend("verified", checked.records[0][1], [], asyncio.ensure_future(broker_ack()))]

    async def settle(self, pending: list[PendingSend]) -> None:
        for p in pending:
            await p.ack


def run_pipeline(
    batches: list[list[int]],
    delays: dict[int, float],
    depth: int,
    fail: set[int] = frozenset(),
    broker: dict[int, float] | None = None,
) -> tuple[list[tuple[str, int]], Any]:
    log: list[tuple[str, int]] = []
    state = FakeState(log, delays, fail, broker)

    async def go() -> None:
        pipe = VerifyPipeline(state, FakeStream(log), depth=depth)  # type: ignore[arg-type]
        for batch in batches:
            await pipe.submit([FakeEvent(n) for n in batch])
        while len([e for e in log if e[0] == "ack"]) < sum(map(len, batches)):
            await asyncio.sleep(0.005)
        pipe.close()

    asyncio.run(go())
    return log, state


def test_a_later_batch_checked_first_is_still_handed_over_and_acked_after_the_earlier_one() -> None:
    log, _ = run_pipeline([[1, 2], [3, 4]], {1: 0.2, 3: 0.0}, depth=2)
    assert log.index(("checked", 3)) < log.index(("checked", 1))  # the second batch was checked first
    assert log.index(("handed", 1)) < log.index(("handed", 3))
    assert [e for e in log if e[0] == "ack"] == [("ack", 1), ("ack", 2), ("ack", 3), ("ack", 4)]


def test_the_next_batch_is_handed_over_before_the_broker_acknowledges_the_last_but_acked_after_it() -> None:
    # the broker takes 0.2 s to acknowledge batch 1 and none for batch 3
    log, _ = run_pipeline([[1, 2], [3, 4]], {1: 0.0, 3: 0.0}, depth=2, broker={1: 0.2, 3: 0.0})
    assert log.index(("handed", 3)) < log.index(("broker-ack", 1))  # not held back by batch 1's round trip
    assert log.index(("broker-ack", 3)) < log.index(("broker-ack", 1))
    # yet no raw message is acked before the broker acknowledged what carries it, and acks stay in order
    assert log.index(("broker-ack", 1)) < log.index(("ack", 1))
    assert [e for e in log if e[0] == "ack"] == [("ack", 1), ("ack", 2), ("ack", 3), ("ack", 4)]


def test_at_most_depth_batches_in_flight() -> None:
    # depth 1: the second batch is not even checked before the first is acknowledged and acked
    log, _ = run_pipeline([[1], [2]], {1: 0.1, 2: 0.0}, depth=1, broker={1: 0.05})
    assert log == [
        ("checked", 1),
        ("handed", 1),
        ("broker-ack", 1),
        ("ack", 1),
        ("checked", 2),
        ("handed", 2),
        ("broker-ack", 2),
        ("ack", 2),
    ]


@pytest.mark.parametrize("depth", [1, 2])
def test_a_routing_bug_costs_its_batch_only(depth: int) -> None:
    log, state = run_pipeline([[1], [2]], {1: 0.0, 2: 0.0}, depth=depth, fail={1})
    assert ("handed", 1) not in log and ("handed", 2) in log
    assert state.counters.internal_errors == 1
    assert [e for e in log if e[0] == "ack"] == [("ack", 1), ("ack", 2)]  # the pipeline goes on


@pytest.mark.parametrize("broker", [{}, {1: 5.0}], ids=["while-checking", "while-awaiting-the-broker"])
def test_close_acks_nothing_the_broker_did_not_acknowledge(broker: dict[int, float]) -> None:
    log: list[tuple[str, int]] = []
    state = FakeState(log, {1: 5.0 if not broker else 0.0}, broker=broker)

    async def go() -> None:
        pipe = VerifyPipeline(state, FakeStream(log), depth=2)  # type: ignore[arg-type]
        await pipe.submit([FakeEvent(1)])
        await asyncio.sleep(0.05)
        pipe.close()  # the agent stops (rebalance, shutdown) while the batch is checked or carried
        await asyncio.sleep(0.05)

    asyncio.run(go())
    assert [e for e in log if e[0] == "ack"] == []  # taken again from the last committed offset


def test_a_record_the_broker_refused_is_sent_again_before_settle_returns() -> None:
    resent: list[tuple[str, bytes]] = []

    async def send_acked(topic: str, value: bytes, headers: list[tuple[str, bytes]]) -> None:
        resent.append((topic, value))

    fake = SimpleNamespace(counters=Counters(), _send_acked=send_acked)

    async def go() -> None:
        loop = asyncio.get_running_loop()
        ok, refused = loop.create_future(), loop.create_future()
        ok.set_result(None)
        refused.set_exception(RuntimeError("NotEnoughReplicas"))
        await LedgerAgents.settle(
            fake,  # type: ignore[arg-type]
            [PendingSend("verified", b"a", [], ok), PendingSend("rejected", b"b", [], refused)],
        )

    asyncio.run(go())
    assert resent == [("rejected", b"b")]
    assert fake.counters.send_retries == 1
