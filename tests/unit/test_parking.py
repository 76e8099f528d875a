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
