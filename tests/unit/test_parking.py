"""Out-of-order arrival across partitions: inputs and custody changes that come later."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from batteryledger.sample import ChainBuilder, Facility, out
from ledger.core import Ledger
from ledger.store import REJECTIONS
from schemas.events import Kind
from schemas.signing import generate_key


def setup(tmp_path: Path) -> tuple[Ledger, ChainBuilder]:
    op = generate_key()
    b = ChainBuilder(op)
    led = Ledger.init(str(tmp_path / "l.db"), operator_key=op, origin="test.example/ledger")
    regs = [
        b.register(Facility("mine", "Mine", "AU", [Kind.BATCH_EXTRACTED])),
        b.register(Facility("ref", "Refinery", "US", [Kind.BATCH_PROCESSED])),
    ]
    assert all(r.status == "appended" for r in led.append([e.raw for e in regs]))
    return led, b


def test_receipt_and_use_before_the_shipment_wait_and_then_append(tmp_path: Path) -> None:
    led, b = setup(tmp_path)
    ore = b.transform("mine", Kind.BATCH_EXTRACTED, [out("ORE-1", "ore", "100", li="3")])
    b.ship("ORE-1", "100", "mine", "ref")
    shipped, received = b.events[-2], b.events[-1]
    use = b.transform(
        "ref",
        Kind.BATCH_PROCESSED,
        [out("LC-1", "lithium_carbonate", "10", li="2")],
        inputs=[("ORE-1", "100")],
    )
    # the refinery's partition is ahead of the mine's: its receipt and its use arrive first
    first = led.append([use.raw, received.raw, ore.raw], park=True)
    assert [r.status for r in first] == ["parked", "parked", "appended"]
    # both first waited for ORE-1 itself; once the ore arrived (same call) they wait for its shipment
    assert first[0].reason == first[1].reason == "not_custodian"
    second = led.append([shipped.raw], park=True)
    # the shipment releases the receipt, which releases the use: reported after the item
    assert [r.status for r in second] == ["appended", "appended", "appended"]
    assert [r.event_id for r in second[1:]] == [received.event_id, use.event_id]
    assert led.parked_count() == 0
    assert led.batch("ORE-1").consumed_kg == 100  # type: ignore[union-attr]


def test_a_receipt_whose_shipment_never_comes_is_rejected_as_not_custodian(tmp_path: Path) -> None:
    led, b = setup(tmp_path)
    ore = b.transform("mine", Kind.BATCH_EXTRACTED, [out("ORE-1", "ore", "100", li="3")])
    b.ship("ORE-1", "100", "mine", "ref")
    received = b.events[-1]
    led.append([ore.raw])
    assert led.append([received.raw], park=True)[0].status == "parked"
    assert led.expire_parked(timedelta(hours=1)) == []  # not old enough yet
    [expired] = led.expire_parked(timedelta(0))
    assert expired.reason == "not_custodian" and "waited 0 s for the custody change" in (expired.detail or "")
    with led.engine.connect() as conn:
        [row] = conn.execute(REJECTIONS.select().where(REJECTIONS.c.event_id == received.event_id)).all()
    assert bytes(row.raw) == received.raw  # the original bytes are kept


def test_an_event_that_overtakes_its_facility_registration_waits_for_it(tmp_path: Path) -> None:
    led, b = setup(tmp_path)
    late = Facility("recycler", "Recycler", "CA", [Kind.BATCH_EXTRACTED])
    b.facilities[late.facility_id] = late
    early = b.transform("recycler", Kind.BATCH_EXTRACTED, [out("BM-1", "black_mass", "10", li="1")])
    assert led.append([early.raw], park=True)[0].reason == "unknown_facility"
    registration = b.register(late)
    results = led.append([registration.raw], park=True)
    assert [(r.event_id, r.status) for r in results] == [
        (registration.event_id, "appended"),
        (early.event_id, "appended"),  # released by the registration, signature checked then
    ]


def test_a_facility_that_never_registers_is_rejected_after_the_wait(tmp_path: Path) -> None:
    led, b = setup(tmp_path)
    rogue = Facility("rogue", "Rogue", "XX", [Kind.BATCH_EXTRACTED])
    b.facilities[rogue.facility_id] = rogue
    ev = b.transform("rogue", Kind.BATCH_EXTRACTED, [out("X-1", "ore", "10", li="1")])
    assert led.append([ev.raw], park=True)[0].status == "parked"
    [expired] = led.expire_parked(timedelta(0))
    assert expired.reason == "unknown_facility" and "waited 0 s for a registration" in (expired.detail or "")


# ----------------------------------------------------------------- copies of one event (issue 10)


def _forged_copy(raw: bytes, key_id: str = "0123456789abcdef") -> bytes:
    """The same event (same event id) under another signature: what anyone on the topic can send."""
    import base64
    import json

    obj = json.loads(raw)
    obj["sig"] = {"alg": "Ed25519", "key_id": key_id, "value": base64.b64encode(b"\x01" * 64).decode()}
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


def test_a_waiting_event_is_never_displaced_by_a_copy_with_another_signature(tmp_path: Path) -> None:
    from ledger.core import Incoming
    from schemas.signing import decode

    led, b = setup(tmp_path)
    b.transform("mine", Kind.BATCH_EXTRACTED, [out("ORE-9", "ore", "100", li="3")])
    ore = b.events[-1]
    b.ship("ORE-9", "100", "mine", "ref")
    shipped, received = b.events[-2], b.events[-1]
    forged = _forged_copy(received.raw)
    assert decode(forged).event_id == received.event_id  # same id, other signature
    first = led.append(
        [Incoming(raw=received.raw, source="t/0/1"), Incoming(raw=forged, source="t/0/2")], park=True
    )
    assert [r.status for r in first] == ["parked", "parked"]
    assert led.parked_count() == 2  # both copies wait: the second did not overwrite the first
    released = led.append([ore.raw, shipped.raw], park=True)
    by_source = {r.source: r for r in released[2:]}
    assert set(by_source) == {"t/0/1", "t/0/2"}  # each copy decided under its own source
    assert by_source["t/0/1"].status == "appended"
    assert by_source["t/0/2"].status == "rejected" and by_source["t/0/2"].reason in (
        "unknown_key",
        "duplicate_conflict",
    )
    assert by_source["t/0/2"].raw == forged  # its original bytes travel with its verdict
    assert led.parked_count() == 0
    dec = led.decisions([received.event_id], ["t/0/2"])
    assert dec[received.event_id][0] == "appended" and dec["t/0/2"][0] == "rejected"


def test_a_conflicting_copy_says_which_copy_won_and_why(tmp_path: Path) -> None:
    from ledger.core import Incoming

    led, b = setup(tmp_path)
    ev = b.transform("mine", Kind.BATCH_EXTRACTED, [out("ORE-8", "ore", "100", li="3")])
    # a copy signed by another key of a known facility (the registry key) with the same content
    forged = _forged_copy(ev.raw)
    [ok] = led.append([Incoming(raw=ev.raw, source="t/0/5")], park=True)
    assert ok.status == "appended"
    [dup] = led.append([Incoming(raw=forged, source="t/0/6")], park=True)
    assert dup.status == "rejected" and dup.reason == "duplicate_conflict"
    assert f"seq {ok.seq}" in (dup.detail or "")
    assert "first copy that passed every check" in (dup.detail or "")
    assert led.decisions(sources=["t/0/6"])["t/0/6"][2] == "duplicate_conflict"


def test_expired_waiting_events_come_back_with_bytes_and_source_for_every_reason(tmp_path: Path) -> None:
    from ledger.core import Incoming

    led, b = setup(tmp_path)
    # parents_timeout: an input that never comes
    orphan = b.transform(
        "ref",
        Kind.BATCH_PROCESSED,
        [out("LC-7", "lithium_carbonate", "1", li="0.1")],
        inputs=[("NONE-7", "5")],
    )
    # not_custodian: a receipt whose shipment never comes
    b.transform("mine", Kind.BATCH_EXTRACTED, [out("ORE-7", "ore", "100", li="3")])
    ore = b.events[-1]
    b.ship("ORE-7", "100", "mine", "ref")
    received = b.events[-1]
    # unknown_facility: a facility that never registers
    rogue = Facility("rogue7", "Rogue", "XX", [Kind.BATCH_EXTRACTED])
    b.facilities[rogue.facility_id] = rogue
    stray = b.transform("rogue7", Kind.BATCH_EXTRACTED, [out("X-7", "ore", "10", li="1")])
    led.append([ore.raw])
    items = [
        Incoming(raw=orphan.raw, source="t/1/1"),
        Incoming(raw=received.raw, source="t/1/2"),
        Incoming(raw=stray.raw, source="t/1/3"),
    ]
    assert [r.status for r in led.append(items, park=True)] == ["parked"] * 3
    expired = {r.source: r for r in led.expire_parked(timedelta(0))}
    assert {s: r.reason for s, r in expired.items()} == {
        "t/1/1": "parents_timeout",
        "t/1/2": "not_custodian",
        "t/1/3": "unknown_facility",
    }
    assert expired["t/1/1"].raw == orphan.raw
    assert expired["t/1/2"].raw == received.raw
    assert expired["t/1/3"].raw == stray.raw


def test_a_store_from_before_park_ids_keeps_its_waiting_events(tmp_path: Path) -> None:
    """Parked rows keyed by event id (the old table) are carried over on the first append."""
    from sqlalchemy import text

    led, b = setup(tmp_path)
    ore = b.transform("mine", Kind.BATCH_EXTRACTED, [out("ORE-OLD", "ore", "100", li="3")])
    child = b.transform(
        "mine", Kind.BATCH_EXTRACTED, [out("ORE-OLD-2", "ore", "1", li="0.1")]
    )  # placeholder to advance the clock
    use = b.transform(
        "ref",
        Kind.BATCH_PROCESSED,
        [out("LC-OLD", "lithium_carbonate", "1", li="0.1")],
        inputs=[("ORE-OLD", "5")],
    )
    assert led.append([use.raw], park=True)[0].status == "parked"
    with led.engine.begin() as conn:  # rebuild the table as the old schema had it, rows kept
        conn.execute(
            text(
                "CREATE TABLE parked_old AS SELECT event_id, data, raw, missing, reason, detail, source, parked_at FROM parked"
            )
        )
        conn.execute(text("DROP TABLE parked"))
        conn.execute(
            text(
                "CREATE TABLE parked (event_id VARCHAR(64) PRIMARY KEY, data BLOB NOT NULL, raw BLOB NOT NULL, "
                "missing VARCHAR NOT NULL, reason VARCHAR(48) NOT NULL, detail VARCHAR NOT NULL, source VARCHAR NOT NULL, "
                "parked_at DATETIME NOT NULL)"
            )
        )
        conn.execute(text("INSERT INTO parked SELECT * FROM parked_old"))
        conn.execute(text("DROP TABLE parked_old"))
    reopened = Ledger(led.url)
    assert reopened.parked_count() == 1  # a reader reads it as it is
    res = reopened.append([ore.raw, child.raw], park=True)
    assert [r.status for r in res] == ["appended", "appended"]
    assert reopened.parked_count() == 1  # carried over (it now waits for the shipment to the refinery)
    [expired] = reopened.expire_parked(timedelta(0))
    assert expired.event_id == use.event_id and expired.reason == "not_custodian" and expired.raw == use.raw
