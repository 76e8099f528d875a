"""What an attacker, a careless client and a crash get, through a real Kafka broker and worker (issue 10).

Same rig as test_end_to_end (own topics, own SQLite ledger, own worker process); nothing is mocked.
"""

from __future__ import annotations

from typing import Any

from kafka import KafkaProducer

from batteryledger.sample import ChainBuilder, Facility, out
from ledger.intake import HopKey, pack_verified, verify_message
from schemas.cloudevents import to_binary
from schemas.events import Kind
from schemas.signing import decode
from streams.publisher import Publisher, PublishError
from streams.topics import (
    MATERIAL_EVENTS,
    MATERIAL_EVENTS_VERIFIED,
    TOPIC_MAX_MESSAGE_BYTES,
)
from tests.integration.test_end_to_end import Rig, extraction, rejected_records, rig  # noqa: F401
from tests.support.streams_helpers import family


def test_expired_waiting_events_reach_the_rejected_topic_with_bytes_and_source(rig: Rig) -> None:  # noqa: F811
    rig.start_worker()
    rig.register()
    pub = rig.pub()
    b = ChainBuilder(rig.chain.operator_key)
    # parents_timeout: a child whose parent never comes
    _, orphan = family(rig.chain, "never-e2e")
    # unknown_facility: a facility that never registers
    rogue = Facility("rogue-e2e", "Rogue", "XX", [Kind.BATCH_EXTRACTED])
    b.facilities[rogue.facility_id] = rogue
    stray = b.transform("rogue-e2e", Kind.BATCH_EXTRACTED, [out("ROGUE-1", "ore", "10", li="1")]).raw
    # not_custodian: a receipt whose shipment never comes (the mine extracted, the refinery claims it)
    mine = rig.chain.facilities["mine-au-greenbushes"]
    ore = extraction(mine.facility_id, mine.key, "NC-ORE-1", 1)
    ref = rig.chain.facilities["mine-cl-atacama"]  # every registered facility may receive
    from schemas.signing import sign_object

    receipt, _ = sign_object(
        {
            "spec": "batteryledger/1",
            "kind": "batch.received",
            "facility_id": ref.facility_id,
            "time": "2025-03-02T00:00:00Z",
            "batch_id": "NC-ORE-1",
            "kg": "10",
            "from_facility_id": mine.facility_id,
        },
        ref.key,
    )
    pub.publish_signed(ore)
    rig.decided([decode(ore).event_id])
    expected = {}
    for raw, reason in ((orphan, "parents_timeout"), (stray, "unknown_facility"), (receipt, "not_custodian")):
        pub.publish_signed(raw)
        expected[pub.last_receipt.source] = (raw, reason)  # type: ignore[union-attr]
    found = rejected_records(rig, set(expected))
    for source, (raw, reason) in expected.items():
        value, hdrs = found[source]
        assert hdrs["bl_reason"].decode() == reason, (source, hdrs)
        assert value == to_binary(decode(raw)).value == raw  # the original bytes, for every reason
        assert hdrs["bl_event_id"].decode() == decode(raw).event_id
        assert hdrs["bl_stage"] == b"sequence"


def test_a_forged_record_on_the_verified_topic_is_refused_and_never_appended(rig: Rig) -> None:  # noqa: F811
    rig.start_worker()
    rig.register()
    mine = rig.chain.facilities["mine-au-greenbushes"]
    forged_event = extraction(mine.facility_id, mine.key, "FORGED-1", 7)
    # an attacker who can write the verified topic: the old format, and a batch under a key of their own
    legacy_headers = [("bl_sig_checked", b"1"), ("bl_source", b"material-events/0/999999")]
    [(fh, fv)] = pack_verified(
        [verify_message(*_binary(forged_event), _empty_registry(), source="material-events/0/999998")],
        HopKey.generate(),
        rig.topics[MATERIAL_EVENTS_VERIFIED],
    )
    producer = KafkaProducer(bootstrap_servers=rig.bootstrap, acks="all")
    try:
        metas = [
            producer.send(
                rig.topics[MATERIAL_EVENTS_VERIFIED], value=forged_event, headers=legacy_headers
            ).get(30),
            producer.send(rig.topics[MATERIAL_EVENTS_VERIFIED], value=fv, headers=fh).get(30),
        ]
    finally:
        producer.close()
    sources = [f"{m.topic}/{m.partition}/{m.offset}" for m in metas]
    dec = rig.decided(sources=sources)
    assert [dec[s][2] for s in sources] == ["unauthenticated", "unauthenticated"]
    found = rejected_records(rig, set(sources))
    assert found[sources[0]][0] == forged_event and found[sources[1]][0] == fv  # bytes kept
    with rig.ledger as led:
        assert led.decisions([decode(forged_event).event_id]) == {}  # never appended
    # the pipeline goes on: the same event published properly is appended
    eid = rig.pub().publish_signed(forged_event)
    assert rig.decided([eid])[eid][0] == "appended"


def _binary(raw: bytes) -> tuple[list[tuple[str, bytes]], bytes]:
    msg = to_binary(decode(raw))
    return msg.headers, msg.value


def _empty_registry() -> Any:
    from ledger.registry import Registry

    return Registry()


def test_a_message_too_large_to_forward_is_rejected_as_oversized_and_nothing_after_it_is_lost(
    rig: Rig,  # noqa: F811
) -> None:
    rig.start_worker()
    rig.register()
    mine = rig.chain.facilities["mine-au-greenbushes"]
    template = to_binary(decode(extraction(mine.facility_id, mine.key, "SZ-0", 0))).headers
    producer = KafkaProducer(
        bootstrap_servers=rig.bootstrap, acks="all", max_request_size=2 * TOPIC_MAX_MESSAGE_BYTES
    )
    big = b"{" + b" " * (TOPIC_MAX_MESSAGE_BYTES - 4096) + b"}"  # about 1 MiB: the raw topic takes it
    try:
        meta = producer.send(rig.topics[MATERIAL_EVENTS], key=b"f", value=big, headers=template).get(30)
    finally:
        producer.close()
    after = [extraction(mine.facility_id, mine.key, f"SZ-{j}", j) for j in range(1, 6)]
    ids = [rig.pub().publish_signed(raw) for raw in after]
    source = f"{meta.topic}/{meta.partition}/{meta.offset}"
    dec = rig.decided(ids, [source])
    assert dec[source][2] == "oversized"
    assert all(dec[i][0] == "appended" for i in ids)
    with rig.ledger as led:
        from ledger.store import REJECTIONS

        with led.engine.connect() as conn:
            [row] = conn.execute(REJECTIONS.select().where(REJECTIONS.c.source == source)).all()
        assert big.startswith(bytes(row.raw)) and len(row.raw) > 64 * 1024  # its bytes (a long prefix) kept
        assert str(len(big)) in row.detail
    found = rejected_records(rig, {source})
    assert found[source][1]["bl_reason"] == b"oversized"


def test_the_publisher_stays_usable_after_the_broker_refuses_a_message(rig: Rig) -> None:  # noqa: F811
    rig.start_worker()
    rig.register()
    mine = rig.chain.facilities["mine-au-greenbushes"]
    with Publisher(rig.bootstrap, mine.facility_id, mine.key, topic=rig.topics[MATERIAL_EVENTS]) as pub:
        try:
            pub.publish_raw(b"x" * (TOPIC_MAX_MESSAGE_BYTES + 4096))
            raise AssertionError("the broker took a record above the topic limit")
        except PublishError as exc:
            assert "MessageSizeTooLarge" in str(exc) or "too large" in str(exc).lower()
        eid = pub.publish_signed(extraction(mine.facility_id, mine.key, "AFTER-REFUSAL", 3))
    assert rig.decided([eid])[eid][0] == "appended"


def test_the_kafka_key_is_not_checked(rig: Rig) -> None:  # noqa: F811
    """docs/contract.md: the key only places the message; the signed facility id identifies the sender."""
    rig.start_worker()
    rig.register()
    mine = rig.chain.facilities["mine-au-greenbushes"]
    ids = []
    for j, key in enumerate((b"someone-else", b"")):
        raw = extraction(mine.facility_id, mine.key, f"KEY-{j}", j)
        msg = to_binary(decode(raw))
        rig.pub().publish_raw(msg.value, headers=msg.headers, key=key)
        ids.append(decode(raw).event_id)
    dec = rig.decided(ids)
    assert [dec[i][0] for i in ids] == ["appended", "appended"]
