"""The Publisher against a real broker: every event signed once, sent, acknowledged and reported.

Fast signing (issue 11) must not cost the guarantees: `publish` returns only after the broker's ack,
`publish_many` reports each event's ack in order (or raises at the first failure, after reporting every
event before it), and what lands on the topic is exactly what the ledger decodes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, TopicPartition

from schemas.cloudevents import to_binary
from schemas.signing import decode, generate_key
from streams.localbroker import LocalBroker
from streams.publisher import PUBLISH_CHUNK, Publisher, PublishError, Receipt, kafka_crc32c_native
from streams.topics import MATERIAL_EVENTS

FID = "mine-pub-test"


def _event(i: int, **extra: Any) -> dict[str, Any]:
    return {
        "kind": "batch.extracted",
        "time": f"2025-03-01T00:{i // 60 % 60:02d}:{i % 60:02d}Z",
        "outputs": [{"batch_id": f"PUBT-{i}", "material": "spodumene_concentrate", "kg": "1000.5"}],
        "site": f"pit {i} · Grünbühl 😀",
        **extra,
    }


def _records(bootstrap: str, topic: str, n: int) -> list[Any]:
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, consumer_timeout_ms=10_000
    )
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        out: list[Any] = []
        for record in consumer:
            out.append(record)
            if len(out) >= n:
                break
        return out
    finally:
        consumer.close()


@pytest.mark.parametrize("sign_processes", [0, 2])
def test_publish_many_signs_sends_and_reports_every_ack(
    kafka_bootstrap: str, make_topics: Any, sign_processes: int
) -> None:
    """In the Publisher's process, or in two signing helpers (streams/signpool.py): the same guarantees."""
    topic = make_topics()[MATERIAL_EVENTS]
    key = generate_key()
    acked: list[Receipt] = []
    n = 300 if not sign_processes else 3 * PUBLISH_CHUNK + 100  # several chunks in flight
    events = [_event(i) for i in range(n)]
    with Publisher(kafka_bootstrap, FID, key, topic=topic, sign_processes=sign_processes) as pub:
        receipts = pub.publish_many(events, on_ack=acked.append)
        one = pub.publish(_event(10_000))  # a lone publish: acknowledged when it returns
        assert pub.last_receipt is not None and pub.last_receipt.event_id == one
    assert receipts == acked and len(receipts) == n
    assert len({r.source for r in receipts}) == n
    assert [r.event_id for r in receipts] == [
        decode(pub.sign(e)).event_id for e in events
    ]  # in the order given
    signed_here = {r.event_id for r in receipts} | {one}
    records = _records(kafka_bootstrap, topic, n + 1)
    assert len(records) == n + 1
    for rec in records:
        d = decode(rec.value)  # what the ledger computes from the bytes on the topic
        assert d.signed == rec.value
        key.public_key().verify(d.signature, d.unsigned)
        expected = to_binary(d)  # the CloudEvents SDK's message for the same event
        assert list(rec.headers) == expected.headers and rec.key == expected.key
        signed_here.discard(d.event_id)
    assert signed_here == set()  # every event id the Publisher reported is the decoded one
    assert kafka_crc32c_native()  # the crc32c wheel computed the CRC of those record batches


@pytest.mark.parametrize(
    ("total", "bad", "sign_processes"),
    [
        (50, 30, 0),
        (PUBLISH_CHUNK + 200, PUBLISH_CHUNK + 100, 0),
        (4 * PUBLISH_CHUNK, 2 * PUBLISH_CHUNK + 7, 2),
    ],
)
def test_an_invalid_event_mid_batch_is_refused_after_the_ones_before_it_are_acked(
    kafka_bootstrap: str, make_topics: Any, total: int, bad: int, sign_processes: int
) -> None:
    topic = make_topics()[MATERIAL_EVENTS]
    acked: list[Receipt] = []
    events = [_event(i) for i in range(total)]
    events[bad] = _event(bad, outputs=[{"batch_id": "X", "material": "ore", "kg": 1.5}])  # float kg
    with (
        Publisher(kafka_bootstrap, FID, generate_key(), topic=topic, sign_processes=sign_processes) as pub,
        pytest.raises(PublishError, match="not valid"),
    ):
        pub.publish_many(events, on_ack=acked.append)
    assert len(acked) == bad  # the events before it: each acknowledged and reported, none dropped
    assert [r.offset for r in acked] == sorted(r.offset for r in acked)  # reported in order
    assert len(_records(kafka_bootstrap, topic, bad + 1)) == bad  # and nothing after it was sent


def test_values_with_no_json_form_are_a_publish_error(kafka_bootstrap: str, make_topics: Any) -> None:
    from datetime import UTC, datetime

    topic = make_topics()[MATERIAL_EVENTS]
    with Publisher(kafka_bootstrap, FID, generate_key(), topic=topic) as pub:
        with pytest.raises(PublishError, match="no JSON form"):
            pub.publish(_event(1, time=datetime(2025, 3, 1, tzinfo=UTC)))
        big = [
            {"batch_id": f"B{j:03d}" + "x" * 120, "material": "m" * 64, "kg": "100000000000.123456",
             "value_usd": "100000000000.123456", "production_cost_usd": "100000000000.123456"}
            for j in range(256)
        ]  # fmt: skip
        with pytest.raises(PublishError, match="oversized"):  # schema-valid, but above MAX_EVENT_BYTES
            pub.publish(_event(2, outputs=big))


def test_an_unacknowledged_send_is_a_publish_error_naming_the_event(
    local_broker: LocalBroker, make_topics: Any
) -> None:
    # The broker is frozen (SIGSTOP) after the Publisher connected: no ack can come, and the Publisher's
    # ack timeout must surface as a PublishError, for publish and publish_many alike, never as a silent
    # drop. (Kafka 4 caps min.insync.replicas at the replication factor, so a one-broker cluster cannot
    # refuse acks=all writes any other way.)
    topic = make_topics()[MATERIAL_EVENTS]
    acked: list[Receipt] = []
    threads_before = set(threading.enumerate())
    # a short bootstrap timeout: after a failed ack the Publisher starts a fresh producer, which cannot
    # reach the frozen broker either (the next send then says so as a PublishError too)
    pub = Publisher(
        local_broker.bootstrap, FID, generate_key(), topic=topic, ack_timeout=3.0, bootstrap_timeout_ms=3000
    )
    pub.publish(_event(0))  # connected, metadata and producer id in hand
    pid = local_broker.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    _wait_stopped(pid)  # every thread of the JVM stopped before the next send, not soon after
    try:
        with pytest.raises(PublishError, match=r"did not acknowledge event [0-9a-f]{64}.* within 3 s"):
            pub.publish(_event(1))
        with pytest.raises(PublishError, match=r"did not (acknowledge|take) event [0-9a-f]{64}"):
            pub.publish_many([_event(i) for i in range(2, 22)], on_ack=acked.append)
        assert acked == []
        try:
            pub.close(timeout=2.0)
        except PublishError as exc:  # unacknowledged sends at close are reported, not dropped
            assert "not acknowledged" in str(exc)
        # and no producer the Publisher made (the first, and the fresh one after each failed ack) is left
        # running its I/O thread, retrying against the frozen broker until the process exits
        left = [
            t.name
            for t in threading.enumerate()
            if t not in threads_before and t.is_alive() and t.name.endswith("-network-thread")
        ]
        assert left == [], f"producer threads still running after close: {left}"
    finally:
        os.kill(pid, signal.SIGCONT)


def _wait_stopped(pid: int, timeout: float = 10.0) -> None:
    """Until every thread of process `pid` is in the stopped state (T in /proc/PID/task/*/stat)."""
    deadline = time.monotonic() + timeout
    while True:
        states = []
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                stat = (task / "stat").read_text()
                states.append(stat[stat.rindex(")") + 2])
        if states and all(st in "tT" for st in states):
            return
        assert time.monotonic() < deadline, f"broker {pid} not stopped: thread states {sorted(set(states))}"
        time.sleep(0.01)


def test_a_topic_that_does_not_exist_is_a_publish_error(kafka_bootstrap: str) -> None:
    # the broker never auto-creates topics: the send cannot get metadata within max_block_ms
    with (
        Publisher(
            kafka_bootstrap, FID, generate_key(), topic=f"absent-{uuid.uuid4().hex[:8]}", max_block_ms=2000
        ) as pub,
        pytest.raises(PublishError, match="did not take event"),
    ):
        pub.publish_many([_event(1)])
