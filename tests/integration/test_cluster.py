"""The ledger on a replicated 3-node Kafka cluster (``LocalCluster``: KRaft, every node broker and controller).

One cluster for the whole module (starting three JVMs costs a minute on a loaded 2-core machine); each test
gets its own topics, ledger and worker, and leaves every node running when it ends. Brokers are killed
with SIGKILL (a crash: no controlled shutdown). Each test publishes a few thousand events at most and
asserts what the issue asks: every event appended exactly once, the chain verifies, a publish call reports
success only for events the cluster kept. Nothing is mocked; a cluster that cannot start FAILS the tests.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from batteryledger.cli import app as cli_app
from batteryledger.sample import demo_chain
from ledger.core import Ledger
from schemas.signing import decode, save_private_key
from streams.localbroker import BrokerError, LocalCluster, _admin, create_topics
from streams.publisher import Publisher, PublishError, Receipt
from streams.settings import Settings
from streams.topics import ALL_TOPICS, MATERIAL_EVENTS, MATERIAL_EVENTS_VERIFIED
from tests.integration.test_end_to_end import Rig, chain_ok, extraction

CLUSTER_START_TIMEOUT_S = 300.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path_factory.mktemp("cluster"), nodes=3, heap="512m")
    try:
        c.start(timeout=CLUSTER_START_TIMEOUT_S)
    except BrokerError as exc:
        c.stop()
        pytest.fail(f"the 3-node test cluster could not be started:\n{exc.diagnostics()}", pytrace=False)
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def crig(tmp_path: Path, cluster: LocalCluster) -> Iterator[Rig]:
    """A Rig (see test_end_to_end) whose topics live on the cluster, replicated 3 times, min ISR 2."""
    suffix = f"cl-{uuid.uuid4().hex[:8]}"
    specs = ALL_TOPICS(2)
    create_topics(cluster.bootstrap, [s.renamed(f"{s.name}-{suffix}") for s in specs])
    topics = {s.name: f"{s.name}-{suffix}" for s in specs}
    chain = demo_chain()
    store = f"sqlite:///{tmp_path}/ledger.db"
    Ledger.init(store, operator_key=chain.operator_key, origin="test.batteryledger/cluster").close()
    save_private_key(chain.operator_key, tmp_path / "operator.key")
    settings = Settings(
        broker=cluster.bootstrap,
        store=store,
        app_id=f"bl-cluster-{uuid.uuid4().hex[:8]}",
        partitions=2,
        topic_suffix=suffix,
        operator_key=tmp_path / "operator.key",
        checkpoint_every=500,
        data_dir=tmp_path / "faust",
    )
    r = Rig(tmp_path, cluster.bootstrap, topics, chain, settings)
    try:
        yield r
    finally:
        r.close()
        for n in cluster.nodes:  # the next test starts with every node up
            if not n.is_running():
                cluster.restart(n.node_id)


def _events(rig: Rig, tag: str, per_facility: int) -> list[bytes]:
    facs = [f for f in rig.chain.facilities.values() if "batch.extracted" in {r.value for r in f.roles}][:4]
    return [
        extraction(f.facility_id, f.key, f"{tag}-{i}-{j}", j)
        for j in range(per_facility)
        for i, f in enumerate(facs)
    ]


def _exactly_once(rig: Rig, ids: list[str], base: int) -> None:
    dec = rig.decided(ids)
    assert all(v[0] == "appended" for v in dec.values()), [v for v in dec.values() if v[0] != "appended"][:3]
    with rig.ledger as led:
        assert led.size == base + len(ids)
        assert led.stats()["rejections"] == {}
        assert sorted(v[1] for v in dec.values()) == list(range(base, base + len(ids)))  # once each, no gaps
        chain_ok(led)


def test_topics_create_on_a_cluster_says_and_uses_rf_3_min_isr_2(cluster: LocalCluster) -> None:
    suffix = f"cli-{uuid.uuid4().hex[:6]}"
    res = CliRunner().invoke(
        cli_app, ["topics", "create", "--broker", cluster.bootstrap, "--topic-suffix", suffix]
    )
    assert res.exit_code == 0, res.output
    assert "3 brokers: replication factor 3, min.insync.replicas 2, unclean leader election off" in res.output
    from kafka.admin import ConfigResource, ConfigResourceType

    admin = _admin(cluster.bootstrap, 10)
    try:
        name = f"{MATERIAL_EVENTS_VERIFIED}-{suffix}"
        [info] = admin.describe_topics([name])
        assert all(len(p["replica_nodes"]) == 3 for p in info["partitions"])
        found = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name)])
        [by_name] = [v for v in found.values() if name in v]
        configs = {k: (v["value"] if isinstance(v, dict) else v) for k, v in by_name[name].items()}
    finally:
        admin.close()
    assert configs["min.insync.replicas"] == "2"
    assert configs["unclean.leader.election.enable"] == "false"
    assert configs["retention.ms"] == "-1"


def test_leader_of_the_verified_topic_killed_while_publishing(crig: Rig, cluster: LocalCluster) -> None:
    crig.start_worker()
    crig.register()
    base = 1 + len(crig.chain.registry_events)
    events = _events(crig, "LEADER", 400)  # 1,600 events
    ids = [decode(raw).event_id for raw in events]
    receipts: list[Receipt] = []
    failures: list[BaseException] = []

    def publish() -> None:
        try:
            with Publisher(cluster.bootstrap, "registry", None, topic=crig.topics[MATERIAL_EVENTS]) as pub:
                for i in range(0, len(events), 100):  # paced: still publishing when the leader dies
                    receipts.extend(pub.publish_many(events[i : i + 100]))
                    time.sleep(0.25)
        except BaseException as exc:  # reported below, with the worker's log
            failures.append(exc)

    sender = threading.Thread(target=publish)
    sender.start()
    crig.wait_for("the worker to be mid-stream", lambda: crig.entries() > base + 300)
    leader = cluster.leader(crig.topics[MATERIAL_EVENTS_VERIFIED])
    cluster.kill(leader)
    killed_at = crig.entries() - base
    sender.join(timeout=300)
    assert not sender.is_alive(), "publishing did not finish within 300 s of the leader's death"
    assert not failures, f"a publish failed with 2 of 3 brokers up: {failures[0]}\n{crig.logs()}"
    assert [r.event_id for r in receipts] == ids  # every publish call acknowledged, in order
    assert killed_at < len(events), "the worker finished before the leader died: publish more events"
    # the dead node is fenced after broker.session.timeout.ms and an in-sync replica leads instead
    crig.wait_for(
        "leadership of the verified topic to move to a live replica",
        lambda: cluster.leader(crig.topics[MATERIAL_EVENTS_VERIFIED]) not in (leader, -1),
        timeout=120,
    )
    _exactly_once(crig, ids, base)


def test_two_of_three_brokers_down_producers_fail_loudly_then_nothing_lost_or_doubled(
    crig: Rig, cluster: LocalCluster
) -> None:
    crig.start_worker()
    crig.register()
    base = 1 + len(crig.chain.registry_events)
    events = _events(crig, "MINISR", 250)  # 1,000 events
    ids = [decode(raw).event_id for raw in events]
    topic = crig.topics[MATERIAL_EVENTS]
    with Publisher(cluster.bootstrap, "registry", None, topic=topic) as pub:
        pub.publish_many(events[:500])
    crig.decided(ids[:500])
    survivor = cluster.leader(crig.topics[MATERIAL_EVENTS_VERIFIED])
    down = [n.node_id for n in cluster.nodes if n.node_id != survivor]
    for node_id in down:
        cluster.kill(node_id)
    # 1 of 3 in sync < min.insync.replicas 2 (and the KRaft quorum is lost too): an acks=all producer
    # gets no acknowledgement and fails: the Publisher says so as a PublishError naming an event.
    stuck = Publisher(cluster.bootstrap, "registry", None, topic=topic, ack_timeout=15.0)
    with pytest.raises(PublishError, match=r"did not (acknowledge|take) event"):
        stuck.publish_many(events[500:600])
    # closing a producer with unacknowledged sends says so too (the sends may be lost: publish again)
    with contextlib.suppress(PublishError):
        stuck.close(timeout=5.0)
    for node_id in down:
        cluster.restart(node_id)
    # The plant does what a failed publish asks: publish again. Events that did reach the log before the
    # failure are not appended twice (the sequencer is idempotent by event id).
    with Publisher(cluster.bootstrap, "registry", None, topic=topic) as pub:
        pub.publish_many(events[500:])
    _exactly_once(crig, ids, base)
