"""The local Kafka broker works with every client we use: kafka-python, aiokafka and faust-streaming.

Waits are bounded loops (records or a deadline), never timing assertions.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaTimeoutError, MessageSizeTooLargeError
from typer.testing import CliRunner

from batteryledger.cli_broker import broker_app
from streams import localbroker
from streams.localbroker import KAFKA_VERSION, BrokerError, LocalBroker, create_topics
from streams.topics import (
    MATERIAL_EVENTS,
    MATERIAL_EVENTS_VERIFIED,
    MAX_EVENT_BYTES,
    TOPIC_MAX_MESSAGE_BYTES,
    TopicSpec,
)

pytestmark = pytest.mark.integration

#: Upper bound for any wait on records; generous because CI machines stall, and never asserted on.
WAIT_S = 60.0


def _consume(bootstrap: str, topic: str, count: int, *, partitions: int = 1) -> list[Any]:
    """Read ``count`` records from the start of ``topic`` with kafka-python (manual assignment)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        records: list[Any] = []
        deadline = time.monotonic() + WAIT_S
        while len(records) < count and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()


def test_broker_is_the_pinned_kafka_4_in_kraft_mode(local_broker: LocalBroker, kafka_bootstrap: str) -> None:
    assert kafka_bootstrap.startswith("127.0.0.1:")
    assert KAFKA_VERSION.startswith("4.")
    props = local_broker.properties_path.read_text()
    for line in (
        "process.roles=broker,controller",
        "auto.create.topics.enable=false",
        "offsets.topic.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "share.coordinator.state.topic.replication.factor=1",
        "group.initial.rebalance.delay.ms=0",
    ):
        assert line in props.splitlines()
    assert f"Kafka version: {KAFKA_VERSION}" in local_broker.log_tail(100_000)


def test_create_topics_is_idempotent_and_refuses_another_partition_count(kafka_bootstrap: str) -> None:
    name = f"idempotent-{uuid.uuid4().hex[:8]}"
    assert create_topics(kafka_bootstrap, [TopicSpec(name, 3)]) == [name]
    assert create_topics(kafka_bootstrap, [TopicSpec(name, 3)]) == []
    with pytest.raises(
        BrokerError, match=rf"'{name}' already exists with 3 partitions, but 2 are configured"
    ):
        create_topics(kafka_bootstrap, [TopicSpec(name, 2)])


def test_fresh_topics_have_the_standard_layout(kafka_bootstrap: str, fresh_topics: dict[str, str]) -> None:
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        described = {
            t["name"]: len(t["partitions"]) for t in admin.describe_topics(list(fresh_topics.values()))
        }
    finally:
        admin.close()
    assert described[fresh_topics[MATERIAL_EVENTS]] == 2
    assert described[fresh_topics[MATERIAL_EVENTS_VERIFIED]] == 1
    assert len(described) == 4
    suffix = fresh_topics.suffix  # type: ignore[attr-defined]
    assert all(real == f"{logical}-{suffix}" for logical, real in fresh_topics.items())


def test_kafka_python_roundtrip_with_headers_and_key_placement(
    kafka_bootstrap: str, fresh_topics: dict[str, str]
) -> None:
    topic = fresh_topics[MATERIAL_EVENTS]
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    sent = []
    try:
        for i in range(20):
            facility = f"facility-{i % 3}".encode()
            headers = [("ce_id", f"evt-{i}".encode()), ("ce_source", facility)]
            sent.append(producer.send(topic, key=facility, value=f"event {i}".encode(), headers=headers))
        producer.flush()
    finally:
        producer.close()
    metadata = [future.get(timeout=WAIT_S) for future in sent]

    records = _consume(kafka_bootstrap, topic, 20, partitions=2)
    assert len(records) == 20
    by_id = {dict(r.headers)["ce_id"]: r for r in records}
    assert by_id[b"evt-7"].value == b"event 7"
    assert dict(by_id[b"evt-7"].headers)["ce_source"] == b"facility-1"
    # One facility, one partition: its events stay in order.
    placement: dict[bytes, set[int]] = {}
    for record in records:
        placement.setdefault(record.key, set()).add(record.partition)
    assert all(len(parts) == 1 for parts in placement.values())
    for facility in placement:
        seq = [int(dict(r.headers)["ce_id"][4:]) for r in records if r.key == facility]
        assert seq == sorted(seq)
    assert {m.topic for m in metadata} == {topic}


def test_aiokafka_produces_and_consumes_in_a_group(
    kafka_bootstrap: str, fresh_topics: dict[str, str]
) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    topic = fresh_topics[MATERIAL_EVENTS_VERIFIED]

    async def roundtrip() -> list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]]:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
        await producer.start()
        try:
            for i in range(5):
                await producer.send_and_wait(
                    topic, key=b"k", value=f"v{i}".encode(), headers=[("seq", str(i).encode())]
                )
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=kafka_bootstrap,
            group_id=f"aiokafka-{uuid.uuid4().hex[:8]}",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            session_timeout_ms=6000,
        )
        await consumer.start()
        got: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]] = []
        try:
            deadline = time.monotonic() + WAIT_S
            while len(got) < 5 and time.monotonic() < deadline:
                for batch in (await consumer.getmany(timeout_ms=500)).values():
                    got.extend((r.key, r.value, list(r.headers)) for r in batch)
            await consumer.commit()
        finally:
            await consumer.stop()
        return got

    got = asyncio.run(roundtrip())
    assert [value for _, value, _ in got] == [f"v{i}".encode() for i in range(5)]
    assert got[3][2] == [("seq", b"3")]


def test_topic_size_limit_lets_oversized_events_reach_the_verifier(
    kafka_bootstrap: str, fresh_topics: dict[str, str]
) -> None:
    topic = fresh_topics[MATERIAL_EVENTS]
    producer = KafkaProducer(
        bootstrap_servers=kafka_bootstrap, acks="all", max_request_size=4 * TOPIC_MAX_MESSAGE_BYTES
    )
    try:
        # Four times our event limit: the broker takes it, so the verify agent can reject it with a reason.
        producer.send(topic, key=b"f", value=b"x" * (4 * MAX_EVENT_BYTES)).get(timeout=WAIT_S)
        # Beyond the topic's max.message.bytes the broker itself refuses.
        with pytest.raises(MessageSizeTooLargeError):
            producer.send(topic, key=b"f", value=b"x" * (TOPIC_MAX_MESSAGE_BYTES + 1024)).get(timeout=WAIT_S)
    finally:
        producer.close()


def test_topics_are_never_auto_created(kafka_bootstrap: str) -> None:
    missing = f"never-created-{uuid.uuid4().hex[:8]}"
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, max_block_ms=1500)
    try:
        with pytest.raises(KafkaTimeoutError):
            producer.send(missing, value=b"x").get(timeout=WAIT_S)
    finally:
        producer.close()
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        assert missing not in admin.list_topics()
    finally:
        admin.close()


# --------------------------------------------------------------------------------------------- Faust

FAUST_APP = textwrap.dedent(
    """
    from __future__ import annotations

    import os

    import faust

    app = faust.App(
        os.environ["FX_APP_ID"],
        broker=f"kafka://{os.environ['FX_BOOTSTRAP']}",
        store="memory://",
        web_enabled=False,
        broker_session_timeout=6,
        broker_heartbeat_interval=1,
        topic_partitions=1,
    )
    source = app.topic(os.environ["FX_IN"], value_serializer="raw", key_serializer="raw")
    sink = app.topic(os.environ["FX_OUT"], value_serializer="raw", key_serializer="raw")
    # A table makes Faust create a changelog topic itself (auto creation is off on the broker).
    seen = app.Table("seen", default=int, partitions=1)


    @app.agent(source, concurrency=1)
    async def forward(stream):
        async for event in stream.events():
            seen["all"] += 1
            headers = list((event.headers or {}).items()) + [("forwarded-by", b"faust")]
            await sink.send(key=event.key, value=b"fwd:" + event.value, headers=headers)


    if __name__ == "__main__":
        app.main()
    """
)


@pytest.fixture
def faust_worker(
    kafka_bootstrap: str, tmp_path: Path
) -> Iterator[Callable[[str, str, str], subprocess.Popen[bytes]]]:
    """Start ``faust worker`` (no web server) for the test app in a subprocess; stopped at teardown."""
    procs: list[subprocess.Popen[bytes]] = []
    app_file = tmp_path / "fx_app.py"
    app_file.write_text(FAUST_APP)
    log_path = tmp_path / "faust.log"

    def start(app_id: str, source: str, sink: str) -> subprocess.Popen[bytes]:
        env = {
            **os.environ,
            "FX_APP_ID": app_id,
            "FX_BOOTSTRAP": kafka_bootstrap,
            "FX_IN": source,
            "FX_OUT": sink,
        }
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, str(app_file), "worker", "--without-web", "--loglevel", "info"],
                cwd=tmp_path,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def _faust_log(tmp_path: Path) -> str:
    try:
        return "\n".join((tmp_path / "faust.log").read_text(errors="replace").splitlines()[-60:])
    except OSError:
        return "(no faust log)"


def test_faust_agent_forwards_records_and_commits_offsets(
    kafka_bootstrap: str,
    make_topics: Callable[..., dict[str, str]],
    faust_worker: Callable[[str, str, str], subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    topics = make_topics(partitions=1)
    source, sink = topics[MATERIAL_EVENTS], topics[MATERIAL_EVENTS_VERIFIED]
    app_id = f"fx-{uuid.uuid4().hex[:8]}"

    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    try:
        for i in range(10):
            producer.send(
                source, key=b"plant-1", value=f"e{i}".encode(), headers=[("ce_id", f"{i}".encode())]
            )
        producer.flush()
    finally:
        producer.close()

    worker = faust_worker(app_id, source, sink)
    records = _consume(kafka_bootstrap, sink, 10)
    assert worker.poll() is None, f"faust worker exited early:\n{_faust_log(tmp_path)}"
    assert [r.value for r in records] == [f"fwd:e{i}".encode() for i in range(10)], _faust_log(tmp_path)
    assert dict(records[4].headers) == {"ce_id": b"4", "forwarded-by": b"faust"}

    # At-least-once needs commits to work against this broker: the group's offset reaches the end.
    consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=app_id, enable_auto_commit=False)
    try:
        committed = None
        deadline = time.monotonic() + WAIT_S
        while committed != 10 and time.monotonic() < deadline:
            committed = consumer.committed(TopicPartition(source, 0))
            time.sleep(0.2)
    finally:
        consumer.close()
    assert committed == 10, _faust_log(tmp_path)

    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        assert f"{app_id}-seen-changelog" in admin.list_topics()
    finally:
        admin.close()


# ------------------------------------------------------------------------- lifecycle and failures


def test_a_broker_that_cannot_bind_fails_with_its_log_tail(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        broker = LocalBroker(tmp_path / "kafka", port=port)
        with pytest.raises(BrokerError) as info:
            broker.start(timeout=WAIT_S)
    assert f"port {port} is already in use" in info.value.summary
    assert "Address already in use" in str(info.value)
    assert not broker.is_running()


def test_cli_runs_a_background_broker_that_keeps_its_topics(tmp_path: Path) -> None:
    runner = CliRunner()
    state = ["--state-dir", str(tmp_path / "state")]
    try:
        started = runner.invoke(broker_app, ["start", *state])
        assert started.exit_code == 0, started.output
        bootstrap = started.stdout.strip()
        assert bootstrap.startswith("127.0.0.1:")

        shown = runner.invoke(broker_app, ["status", *state])
        assert shown.exit_code == 0 and f"running: {bootstrap}" in shown.stdout
        again = runner.invoke(broker_app, ["start", *state])
        assert again.exit_code == 0 and again.stdout.strip() == bootstrap
        create_topics(bootstrap, [TopicSpec("kept", 1)])

        stopped = runner.invoke(broker_app, ["stop", *state])
        assert stopped.exit_code == 0 and "stopped broker" in stopped.stdout
        gone = runner.invoke(broker_app, ["status", *state])
        assert gone.exit_code == 1 and "not running" in gone.stdout

        restarted = runner.invoke(broker_app, ["start", *state])
        assert restarted.exit_code == 0, restarted.output
        assert create_topics(restarted.stdout.strip(), [TopicSpec("kept", 1)]) == []
    finally:
        localbroker.stop_background(tmp_path / "state")
    assert not localbroker.status(tmp_path / "state").running


def test_cli_errors_are_one_line_without_traceback(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = CliRunner().invoke(broker_app, ["start", "--state-dir", str(blocker / "state")])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: cannot create the broker state dir")
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output


def test_fetch_uses_the_cache_and_names_maven_when_it_is_missing(
    local_broker: LocalBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    # Cached (the session broker fetched): no Maven needed.
    assert (localbroker.fetch(local_broker.cache_dir) / f"kafka_2.13-{KAFKA_VERSION}.jar").is_file()
    with pytest.raises(BrokerError, match=r"Maven \(mvn\) is not on PATH.*install it"):
        localbroker.fetch(tmp_path / "empty-cache")
