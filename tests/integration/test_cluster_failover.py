"""Sequencer failover on PostgreSQL: two workers, SIGKILL the one holding material-events-verified.

Runs on the session's single broker (the failover under test is the worker's, not Kafka's) and the
throwaway PostgreSQL server. The holder is found from the consumer group (each worker's Kafka client id
names its pid, streams/app.py). The failover time (kill -> first entry appended by the other worker) is
printed for the README; no timing is asserted.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from batteryledger.sample import demo_chain
from ledger.core import Ledger
from schemas.signing import decode, save_private_key
from streams.publisher import Publisher
from streams.settings import Settings
from streams.topics import MATERIAL_EVENTS, MATERIAL_EVENTS_VERIFIED
from tests.integration.test_end_to_end import Rig, chain_ok, extraction
from tests.support.groups import holds, members, pid_of
from tests.support.pg import ThrowawayPostgres


@pytest.fixture
def pg_rig(
    tmp_path: Path, kafka_bootstrap: str, make_topics: Callable[..., dict[str, str]], fresh_pg_url: str
) -> Iterator[Rig]:
    topics = make_topics(2)
    suffix = topics[MATERIAL_EVENTS][len(MATERIAL_EVENTS) + 1 :]
    chain = demo_chain()
    Ledger.init(fresh_pg_url, operator_key=chain.operator_key, origin="test.batteryledger/failover").close()
    save_private_key(chain.operator_key, tmp_path / "operator.key")
    settings = Settings(
        broker=kafka_bootstrap,
        store=fresh_pg_url,
        app_id=f"bl-failover-{uuid.uuid4().hex[:8]}",
        partitions=2,
        topic_suffix=suffix,
        operator_key=tmp_path / "operator.key",
        checkpoint_every=500,
        data_dir=tmp_path / "faust",
    )
    r = Rig(tmp_path, kafka_bootstrap, topics, chain, settings)
    try:
        yield r
    finally:
        r.close()


def _sequencer_pid(rig: Rig) -> int | None:
    """Pid of the worker assigned the verified topic (from its client id), or None while rebalancing."""
    verified = rig.topics[MATERIAL_EVENTS_VERIFIED]
    group = members(rig.bootstrap, rig.settings.app_id)
    holders = [m for m in group if holds(m.get("member_assignment"), verified)]
    if len(group) < 2 or len(holders) != 1:
        return None
    return pid_of(holders[0])


def test_two_workers_on_postgresql_sigkill_the_sequencer_holder_the_other_takes_over(pg_rig: Rig) -> None:
    rig = pg_rig
    rig.start_worker()
    rig.start_worker()
    rig.register()
    base = 1 + len(rig.chain.registry_events)
    facs = [f for f in rig.chain.facilities.values() if "batch.extracted" in {r.value for r in f.roles}][:4]
    events = [
        extraction(f.facility_id, f.key, f"FO-{i}-{j}", j) for j in range(500) for i, f in enumerate(facs)
    ]
    ids = [decode(raw).event_id for raw in events]
    failures: list[BaseException] = []

    def publish() -> None:  # a steady stream, so the takeover shows as the first entry after the kill
        try:
            with Publisher(rig.bootstrap, "registry", None, topic=rig.topics[MATERIAL_EVENTS]) as pub:
                for i in range(0, len(events), 50):
                    pub.publish_many(events[i : i + 50])
                    time.sleep(0.05)
        except BaseException as exc:
            failures.append(exc)

    pids: dict[int, int] = {}
    rig.wait_for(
        "both workers in the group, one holding the sequencer", lambda: _sequencer_pid(rig) is not None
    )
    sender = threading.Thread(target=publish)
    sender.start()
    rig.wait_for("the sequencer to be mid-stream", lambda: rig.entries() > base + 300)
    holder = _sequencer_pid(rig)
    assert holder is not None
    pids.update({w.pid or 0: i for i, w in enumerate(rig.workers)})
    assert holder in pids, f"client id pid {holder} is none of the workers {sorted(pids)}"
    rig.workers[pids[holder]].kill()
    killed = time.monotonic()
    at_kill = rig.entries()
    rig.wait_for("the other worker to append", lambda: rig.entries() > at_kill + 1)
    failover_s = time.monotonic() - killed
    sender.join(timeout=300)
    assert not failures, failures
    dec = rig.decided(ids)
    assert all(v[0] == "appended" for v in dec.values()), [v for v in dec.values() if v[0] != "appended"][:3]
    with rig.ledger as led:
        assert led.size == base + len(events)
        assert sorted(v[1] for v in dec.values()) == list(range(base, base + len(events)))
        chain_ok(led)
    print(
        f"\nsequencer failover on PostgreSQL: {failover_s:.1f} s from SIGKILL to the next entry (session timeout {rig.settings.session_timeout_s:g} s)"
    )


def test_postgresql_restarted_under_load_the_sequencer_retries_and_loses_nothing(
    pg_rig: Rig, pg_server: ThrowawayPostgres
) -> None:
    rig = pg_rig
    # The throwaway server runs with synchronous_commit=off (tests/support/pg.py), under which a crash may
    # lose the last transactions it acknowledged: that is PostgreSQL keeping its word, not the ledger
    # failing. This database gets a production-grade commit, so a lost event here is the ledger's fault.
    database = make_url(rig.settings.store).database
    with pg_server.connect_admin() as conn:
        conn.execute(f'ALTER DATABASE "{database}" SET synchronous_commit = on')
    rig.start_worker()
    rig.register()
    base = 1 + len(rig.chain.registry_events)
    facs = [f for f in rig.chain.facilities.values() if "batch.extracted" in {r.value for r in f.roles}][:4]
    events = [
        extraction(f.facility_id, f.key, f"PG-{i}-{j}", j) for j in range(400) for i, f in enumerate(facs)
    ]
    ids = [decode(raw).event_id for raw in events]
    failures: list[BaseException] = []

    def publish() -> None:
        try:
            with Publisher(rig.bootstrap, "registry", None, topic=rig.topics[MATERIAL_EVENTS]) as pub:
                for i in range(0, len(events), 50):
                    pub.publish_many(events[i : i + 50])
                    time.sleep(0.05)
        except BaseException as exc:
            failures.append(exc)

    sender = threading.Thread(target=publish)
    sender.start()
    rig.wait_for("the sequencer to be mid-stream", lambda: rig.entries() > base + 200)
    # An immediate stop is PostgreSQL's crash: open transactions are lost, the append batch in flight
    # rolls back; the worker must retry it (and store no offset past it) until the server is back.
    root = pg_server._root()
    pg_server._run(
        [
            pg_server.binaries["pg_ctl"],
            "stop",
            "-D",
            str(pg_server.data_dir),
            "-m",
            "immediate",
            "-w",
            "-t",
            "30",
        ],
        cwd=root,
    )
    time.sleep(3.0)
    pg_server._pg_ctl_start()
    pg_server._wait_ready()
    sender.join(timeout=300)
    assert not failures, failures
    try:
        dec = rig.decided(ids)
    except pytest.fail.Exception as exc:
        with rig.ledger as led:
            seen = led.decisions(ids, [])
            missing = [i for i in ids if i not in seen]
            stats = led.stats()
        raise AssertionError(
            f"{len(missing)} of {len(ids)} events never decided after the restart (first: {missing[:3]}); "
            f"entries {stats['entries']}, rejections {stats['rejections']}\n{str(exc)[-3000:]}"
        ) from None
    assert all(v[0] == "appended" for v in dec.values()), [v for v in dec.values() if v[0] != "appended"][:3]
    with rig.ledger as led:
        assert led.size == base + len(events)
        assert led.stats()["rejections"] == {}
        assert sorted(v[1] for v in dec.values()) == list(range(base, base + len(events)))
        chain_ok(led)
    assert all(w.is_running() for w in rig.workers), f"a worker died with the database\n{rig.logs()}"
