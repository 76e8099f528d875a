"""streams.agents.VerifyPipeline: batches checked out of order are still sent and acked in order.

The raw offsets Faust commits must never pass a record that was not acknowledged, and the sequencer
recognises re-deliveries by the highest raw offset it has seen per partition: so batch N+1, even when
its check finishes first, is sent only after batch N, and every raw message is acked only after the
records carrying it were sent.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from streams.agents import Counters, VerifyPipeline
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
    """check_raw takes longer for earlier batches; forward records what it sends."""

    def __init__(
        self, log: list[tuple[str, int]], delays: dict[int, float], fail: set[int] = frozenset()
    ) -> None:
        self.log = log
        self.delays = delays
        self.fail = fail
        self.counters = Counters()

    async def check_raw(self, messages: list[int]) -> CheckedBatch:
        await asyncio.sleep(self.delays[messages[0]])
        self.log.append(("checked", messages[0]))
        return CheckedBatch(records=[([], bytes(messages))])

    async def forward(self, checked: CheckedBatch) -> None:
        first = checked.records[0][1][0]
        if first in self.fail:
            raise RuntimeError("a bug in routing")
        await asyncio.sleep(0)
        self.log.append(("sent", first))


def run_pipeline(
    batches: list[list[int]], delays: dict[int, float], depth: int, fail: set[int] = frozenset()
) -> tuple[list[tuple[str, int]], Any]:
    log: list[tuple[str, int]] = []
    state = FakeState(log, delays, fail)

    async def go() -> None:
        pipe = VerifyPipeline(state, FakeStream(log), depth=depth)  # type: ignore[arg-type]
        for batch in batches:
            await pipe.submit([FakeEvent(n) for n in batch])
        while len([e for e in log if e[0] == "ack"]) < sum(map(len, batches)):
            await asyncio.sleep(0.005)
        pipe.close()

    asyncio.run(go())
    return log, state


def test_a_later_batch_checked_first_is_still_sent_and_acked_after_the_earlier_one() -> None:
    log, _ = run_pipeline([[1, 2], [3, 4]], {1: 0.2, 3: 0.0}, depth=2)
    assert log.index(("checked", 3)) < log.index(("checked", 1))  # the second batch was checked first
    sent_and_acked = [e for e in log if e[0] != "checked"]
    assert sent_and_acked == [("sent", 1), ("ack", 1), ("ack", 2), ("sent", 3), ("ack", 3), ("ack", 4)]


def test_at_most_depth_batches_in_flight() -> None:
    # depth 1: the second batch is not even checked before the first is sent and acked
    log, _ = run_pipeline([[1], [2]], {1: 0.1, 2: 0.0}, depth=1)
    assert log == [("checked", 1), ("sent", 1), ("ack", 1), ("checked", 2), ("sent", 2), ("ack", 2)]


@pytest.mark.parametrize("depth", [1, 2])
def test_a_routing_bug_costs_its_batch_only(depth: int) -> None:
    log, state = run_pipeline([[1], [2]], {1: 0.0, 2: 0.0}, depth=depth, fail={1})
    assert ("sent", 1) not in log and ("sent", 2) in log
    assert state.counters.internal_errors == 1
    assert [e for e in log if e[0] == "ack"] == [("ack", 1), ("ack", 2)]  # the pipeline goes on


def test_close_acks_nothing_that_was_not_sent() -> None:
    log: list[tuple[str, int]] = []
    state = FakeState(log, {1: 5.0})

    async def go() -> None:
        pipe = VerifyPipeline(state, FakeStream(log), depth=2)  # type: ignore[arg-type]
        await pipe.submit([FakeEvent(1)])
        await asyncio.sleep(0.05)
        pipe.close()  # the agent stops (rebalance, shutdown) while the batch is being checked
        await asyncio.sleep(0.05)

    asyncio.run(go())
    assert log == []  # not sent, not acked: it is taken again from the last committed offset
