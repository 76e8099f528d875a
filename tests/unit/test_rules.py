"""Append rules, through a real Ledger on a SQLite file: every reason code the ledger can give.

Each rejection is asserted by its stable code, a detail naming the input, no entry, no change to batch
state, and a row in the rejections table holding the original bytes.
"""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from batteryledger.sample import DemoChain
from ledger.core import PARK_MAX_AGE, PARK_MAX_EVENTS, AppendResult, Incoming, Ledger
from ledger.rules import MASS_TOLERANCE_ABS_KG, MASS_TOLERANCE_REL
from ledger.store import ENTRIES, REJECTIONS
from schemas.events import MAX_EVENT_BYTES, SPEC, Element, Kind
from schemas.reasons import EventError, Reason
from schemas.signing import generate_key, key_id, load_public_key, public_key_b64, sign_object
from tests.unit.ledger_kit import REGISTERED, T0, LedgerKit, Party, iso, output

E, P, M, C, MO, PA, R = (
    Kind.BATCH_EXTRACTED,
    Kind.BATCH_PROCESSED,
    Kind.MATERIAL_PRODUCED,
    Kind.CELLS_PRODUCED,
    Kind.MODULES_ASSEMBLED,
    Kind.PACKS_ASSEMBLED,
    Kind.BATCH_RECYCLED,
)
ALL_TRANSFORMS = [E, P, M, C, MO, PA, R]


def rejected(kit: LedgerKit, raw: bytes, reason: str, *names: str, **kw: Any) -> AppendResult:
    """Append `raw`; it must be rejected with `reason`, a detail naming `names`, and leave no trace."""
    size, head = kit.led.size, kit.led.head_hash
    before = kit.rejections()
    res = kit.append(raw, **kw)
    assert res.status == "rejected", res
    assert res.reason == reason, res
    assert res.detail, res
    for name in names:
        assert name in res.detail, (name, res.detail)
    assert res.seq is None
    assert (kit.led.size, kit.led.head_hash) == (size, head)
    with kit.led.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(ENTRIES)).scalar_one() == size
    if res.event_id is not None and reason != "duplicate_conflict":  # a conflict's id names the stored twin
        assert kit.led.entry_data([res.event_id]) == {}
    rows = kit.rejections()
    assert len(rows) == len(before) + 1
    row = rows[-1]
    assert (row.reason, row.detail, row.event_id) == (reason, res.detail, res.event_id)
    assert bytes(row.raw) == raw  # the original bytes, as received
    return res


def appended(res: AppendResult) -> str:
    assert res.status == "appended", res
    assert res.event_id is not None and res.seq is not None
    return res.event_id


@pytest.fixture
def plant(bl_kit: LedgerKit) -> Party:
    """A facility allowed every transformation (so stage and mass rules are reached)."""
    return bl_kit.register("plant-1", ALL_TRANSFORMS)


# -- the demo chain, end to end --------------------------------------------------------------------
def test_demo_chain_appends_and_its_bad_events_get_their_reasons(bl_demo: DemoChain, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    with Ledger.init(url, operator_key=bl_demo.operator_key, origin="test.batteryledger.org/demo") as led:
        results = led.append([e.raw for e in bl_demo.good_events])
        assert [r.status for r in results] == ["appended"] * len(bl_demo.good_events)
        assert [r.seq for r in results] == list(range(1, len(bl_demo.good_events) + 1))
        for label, raw, reason in bl_demo.bad_events:
            [res] = led.append([raw])
            if reason == "duplicate":
                assert res.status == "duplicate", label
            else:
                assert (res.status, res.reason) == ("rejected", reason), (label, res)
        assert led.size == len(bl_demo.good_events) + 1
        pack = led.batch("US-PACK-001")
        assert pack is not None and pack.kg == Decimal("80000")
        spod = led.batch("AU-SPOD-001")
        assert spod is not None and spod.consumed_kg == spod.kg == Decimal(
            "100000"
        )  # overdraw changed nothing


def test_named_assets_through_the_ledger(
    bl_kit: LedgerKit, bl_assets: Path, bl_manifest: dict[str, dict[str, Any]]
) -> None:
    """The artefacts of tests/assets/events, appended for the facility that signed them."""
    public = load_public_key(bl_assets / "signer.pub")
    reg = bl_kit.registration("mine-au-greenbushes", [E], generate_key())
    reg["key"] = {
        "key_id": key_id(public),
        "public_key": public_key_b64(public),
        "valid_from": iso(REGISTERED),
    }
    bl_kit.ok(reg, bl_kit.op)
    valid = (bl_assets / "valid.json").read_bytes()
    assert appended(bl_kit.append(valid)) == bl_manifest["valid.json"]["event_id"]
    # the same signed object, re-spaced and re-ordered: the same event, so a no-op replay
    loose = bl_kit.append((bl_assets / "noncanonical-valid.json").read_bytes())
    assert (loose.status, loose.event_id) == ("duplicate", bl_manifest["valid.json"]["event_id"])
    for name, want in sorted(bl_manifest.items()):
        if want["expect"] != "ok":
            rejected(bl_kit, (bl_assets / name).read_bytes(), want["expect"])
    assert bl_kit.batch("AU-SPOD-042").kg == Decimal("1250.750")


# -- identity: facility, key, time, signature, role ------------------------------------------------
def test_unknown_facility(bl_kit: LedgerKit) -> None:
    rogue = Party("mine-xx-rogue", generate_key(), [E])
    raw, _ = bl_kit.sign(bl_kit.transform(rogue, E, [output("XX-ORE-1", "10")]), rogue.key)
    rejected(bl_kit, raw, "unknown_facility", "mine-xx-rogue")
    assert bl_kit.led.batch("XX-ORE-1") is None


def test_unknown_key(bl_kit: LedgerKit) -> None:
    mine = bl_kit.register("mine-1", [E])
    stranger = generate_key()
    raw, _ = bl_kit.sign(bl_kit.transform(mine, E, [output("ORE-1", "10")]), stranger)
    rejected(bl_kit, raw, "unknown_key", key_id(stranger.public_key()), "mine-1")


def test_key_not_valid_before_valid_from(bl_kit: LedgerKit) -> None:
    mine = bl_kit.register("mine-1", [E])
    early = bl_kit.transform(mine, E, [output("ORE-0", "10")], time="2023-12-31T23:59:59Z")
    rejected(
        bl_kit,
        bl_kit.sign(early, mine.key)[0],
        "key_not_valid_at_event_time",
        mine.key_id,
        "mine-1",
        "valid from 2024-01-01T00:00:00Z",
        "dated 2023-12-31T23:59:59Z",
    )
    # the first instant of validity is valid
    on_time = bl_kit.transform(mine, E, [output("ORE-0", "10")], time=iso(REGISTERED))
    bl_kit.ok(on_time, mine.key)


def test_key_not_valid_after_it_is_retired_by_rotation(bl_kit: LedgerKit) -> None:
    mine = bl_kit.register("mine-1", [E])
    new = generate_key()
    retire_at = T0 + timedelta(days=10)
    bl_kit.ok(
        bl_kit.rotation(mine, new, valid_from=T0, retire_key_id=mine.key_id, retire_at=retire_at), bl_kit.op
    )
    last_second = iso(retire_at - timedelta(seconds=1))
    bl_kit.ok(bl_kit.transform(mine, E, [output("ORE-1", "10")], time=last_second), mine.key)
    late = bl_kit.transform(mine, E, [output("ORE-2", "10")], time=iso(retire_at))
    rejected(
        bl_kit,
        bl_kit.sign(late, mine.key)[0],
        "key_not_valid_at_event_time",
        mine.key_id,
        f"until {iso(retire_at)}",
    )
    # the same event under the new key is fine; the new key is not valid before its valid_from
    bl_kit.ok(late, new)
    before_new = bl_kit.transform(mine, E, [output("ORE-3", "10")], time=iso(T0 - timedelta(seconds=1)))
    rejected(bl_kit, bl_kit.sign(before_new, new)[0], "key_not_valid_at_event_time", key_id(new.public_key()))


def test_rotation_without_retire_at_retires_when_the_new_key_starts(bl_kit: LedgerKit) -> None:
    mine = bl_kit.register("mine-1", [E])
    new = generate_key()
    bl_kit.ok(bl_kit.rotation(mine, new, valid_from=T0, retire_key_id=mine.key_id), bl_kit.op)
    ev = bl_kit.transform(mine, E, [output("ORE-1", "10")], time=iso(T0))
    rejected(bl_kit, bl_kit.sign(ev, mine.key)[0], "key_not_valid_at_event_time", f"until {iso(T0)}")


def test_key_not_valid_after_its_registered_valid_until(bl_kit: LedgerKit) -> None:
    key = generate_key()
    obj = bl_kit.registration("mine-1", [E], key)
    obj["key"]["valid_until"] = iso(T0)
    bl_kit.ok(obj, bl_kit.op)
    mine = Party("mine-1", key, [E])
    bl_kit.ok(bl_kit.transform(mine, E, [output("ORE-1", "1")], time=iso(T0 - timedelta(hours=1))), key)
    ev = bl_kit.transform(mine, E, [output("ORE-2", "1")], time=iso(T0))
    rejected(bl_kit, bl_kit.sign(ev, key)[0], "key_not_valid_at_event_time", f"until {iso(T0)}")


def test_key_revoked_after_revoked_at_but_not_before(bl_kit: LedgerKit) -> None:
    mine = bl_kit.register("mine-1", [E])
    revoked_at = T0 + timedelta(days=5)
    bl_kit.ok(bl_kit.revocation(mine, mine.key_id, revoked_at=revoked_at), bl_kit.op)
    after = bl_kit.transform(mine, E, [output("ORE-1", "10")], time=iso(revoked_at + timedelta(hours=1)))
    rejected(
        bl_kit,
        bl_kit.sign(after, mine.key)[0],
        "key_revoked",
        mine.key_id,
        "mine-1",
        f"revoked at {iso(revoked_at)}",
    )
    at = bl_kit.transform(mine, E, [output("ORE-1", "10")], time=iso(revoked_at))
    rejected(bl_kit, bl_kit.sign(at, mine.key)[0], "key_revoked", mine.key_id)
    # signed before the compromise: still good evidence
    before = bl_kit.transform(mine, E, [output("ORE-1", "10")], time=iso(revoked_at - timedelta(hours=1)))
    bl_kit.ok(before, mine.key)


def test_bad_signature(bl_kit: LedgerKit) -> None:
    mine = bl_kit.register("mine-1", [E])
    raw, _ = bl_kit.sign(bl_kit.transform(mine, E, [output("ORE-1", "1000")]), mine.key)
    tampered = raw.replace(b'"kg":"1000"', b'"kg":"9000"')
    assert tampered != raw
    rejected(bl_kit, tampered, "bad_signature", mine.key_id, "mine-1")
    assert bl_kit.led.batch("ORE-1") is None
    appended(bl_kit.append(raw))


def test_forged_signature_under_a_registered_key_id(bl_kit: LedgerKit) -> None:
    mine = bl_kit.register("mine-1", [E])
    thief = generate_key()
    raw, _ = sign_object(bl_kit.transform(mine, E, [output("ORE-1", "1")]), thief)
    obj = json.loads(raw)
    obj["sig"]["key_id"] = mine.key_id  # claim the mine's key
    rejected(bl_kit, json.dumps(obj).encode(), "bad_signature", mine.key_id)


def test_role_not_allowed(bl_kit: LedgerKit) -> None:
    mine = bl_kit.register("mine-1", [E])
    bl_kit.extract(mine, "ORE-1", "100")
    obj = bl_kit.transform(mine, P, [output("CONC-1", "50")], [("ORE-1", "100")])
    rejected(bl_kit, bl_kit.sign(obj, mine.key)[0], "role_not_allowed", "mine-1", "batch.processed")
    assert bl_kit.batch("ORE-1").consumed_kg == 0


def test_a_plant_cannot_act_as_the_registry(bl_kit: LedgerKit) -> None:
    mine = bl_kit.register("mine-1", [E])
    obj = bl_kit.registration("mine-2", [E], generate_key(), nonce="self-made")
    obj["facility_id"] = "mine-1"
    rejected(bl_kit, bl_kit.sign(obj, mine.key)[0], "role_not_allowed", "mine-1", "facility.registered")
    rot = bl_kit.rotation(mine, generate_key(), valid_from=T0)
    rot["facility_id"] = "mine-1"
    rejected(bl_kit, bl_kit.sign(rot, mine.key)[0], "role_not_allowed", "key.rotated")


# -- registry rules --------------------------------------------------------------------------------
def test_facility_exists(bl_kit: LedgerKit) -> None:
    bl_kit.register("mine-1", [E])
    again = bl_kit.registration("mine-1", [E, P], generate_key(), nonce="second attempt")
    rejected(bl_kit, bl_kit.sign(again, bl_kit.op)[0], "facility_exists", "mine-1")


def test_registration_with_a_key_id_that_is_not_the_fingerprint(bl_kit: LedgerKit) -> None:
    obj = bl_kit.registration("mine-1", [E], generate_key())
    obj["key"]["key_id"] = key_id(generate_key().public_key())
    rejected(bl_kit, bl_kit.sign(obj, bl_kit.op)[0], "schema_invalid", obj["key"]["key_id"], "fingerprint")


def test_registry_events_about_unknown_facilities_and_keys(bl_kit: LedgerKit) -> None:
    ghost = Party("ghost-1", generate_key(), [E])
    rejected(
        bl_kit,
        bl_kit.sign(bl_kit.attestation("ghost-1", feoc=True, as_of=T0), bl_kit.op)[0],
        "unknown_facility",
        "ghost-1",
    )
    rejected(
        bl_kit,
        bl_kit.sign(bl_kit.rotation(ghost, generate_key(), valid_from=T0), bl_kit.op)[0],
        "unknown_facility",
        "ghost-1",
    )
    mine = bl_kit.register("mine-1", [E])
    rejected(
        bl_kit,
        bl_kit.sign(bl_kit.revocation(mine, "0123456789abcdef", revoked_at=T0), bl_kit.op)[0],
        "unknown_key",
        "0123456789abcdef",
        "mine-1",
    )
    retire_unknown = bl_kit.rotation(mine, generate_key(), valid_from=T0, retire_key_id="fedcba9876543210")
    rejected(bl_kit, bl_kit.sign(retire_unknown, bl_kit.op)[0], "unknown_key", "fedcba9876543210")
    same_key = bl_kit.rotation(mine, mine.key, valid_from=T0)
    rejected(bl_kit, bl_kit.sign(same_key, bl_kit.op)[0], "schema_invalid", mine.key_id, "already registered")


# -- duplicates ------------------------------------------------------------------------------------
def test_replay_is_a_duplicate_not_a_second_entry(bl_kit: LedgerKit) -> None:
    mine = bl_kit.register("mine-1", [E])
    raw, eid = bl_kit.sign(bl_kit.transform(mine, E, [output("ORE-1", "10")]), mine.key)
    first = bl_kit.append(raw)
    assert appended(first) == eid
    size, rejections = bl_kit.led.size, len(bl_kit.rejections())
    again = bl_kit.append(raw)
    assert (again.status, again.event_id, again.seq, again.reason) == ("duplicate", eid, None, None)
    both = bl_kit.led.append([raw, raw])
    assert [r.status for r in both] == ["duplicate", "duplicate"]
    assert (bl_kit.led.size, len(bl_kit.rejections())) == (size, rejections)
    assert bl_kit.led.entry_data([eid]) == {eid: (first.seq, raw)}


def test_duplicate_within_one_append_batch(bl_kit: LedgerKit) -> None:
    mine = bl_kit.register("mine-1", [E])
    raw, _ = bl_kit.sign(bl_kit.transform(mine, E, [output("ORE-1", "10")]), mine.key)
    res = bl_kit.led.append([raw, raw])
    assert [r.status for r in res] == ["appended", "duplicate"]


def test_duplicate_conflict_same_event_signed_by_a_second_valid_key(bl_kit: LedgerKit) -> None:
    mine = bl_kit.register("mine-1", [E])
    second = generate_key()
    bl_kit.ok(bl_kit.rotation(mine, second, valid_from=T0), bl_kit.op)  # added, not retiring the first
    obj = bl_kit.transform(mine, E, [output("ORE-1", "10")])
    raw1, eid1 = bl_kit.sign(obj, mine.key)
    raw2, eid2 = bl_kit.sign(obj, second)
    assert eid1 == eid2 and raw1 != raw2
    seq = bl_kit.append(raw1).seq
    rejected(bl_kit, raw2, "duplicate_conflict", eid1, "different signature")
    assert bl_kit.led.entry_data([eid1]) == {eid1: (seq, raw1)}  # the first stored form stays


# -- inputs: existence, quantity, mass -------------------------------------------------------------
def test_unknown_input(bl_kit: LedgerKit, plant: Party) -> None:
    obj = bl_kit.transform(plant, P, [output("CONC-1", "5")], [("NOPE-1", "5")])
    rejected(bl_kit, bl_kit.sign(obj, plant.key)[0], "unknown_input", "'NOPE-1'")
    rejected(
        bl_kit,
        bl_kit.sign(bl_kit.shipment(plant, "NOPE-2", "1", "plant-1"), plant.key)[0],
        "unknown_input",
        "'NOPE-2'",
    )
    rejected(
        bl_kit,
        bl_kit.sign(bl_kit.receipt(plant, "NOPE-3", "1", "plant-1"), plant.key)[0],
        "unknown_input",
        "'NOPE-3'",
    )
    cert = {
        "spec": SPEC,
        "kind": "supplier.certified",
        "facility_id": "plant-1",
        "time": bl_kit.tick(),
        "batch_ids": ["NOPE-4"],
        "statement": "not_prohibited_foreign_entity",
    }
    rejected(bl_kit, bl_kit.sign(cert, plant.key)[0], "unknown_input", "'NOPE-4'")


def test_overdrawn_at_the_limit_passes_one_milligram_over_fails(bl_kit: LedgerKit, plant: Party) -> None:
    bl_kit.extract(plant, "ORE-1", "1000")
    bl_kit.ok(bl_kit.transform(plant, P, [output("CONC-1", "1")], [("ORE-1", "400")]), plant.key)
    assert bl_kit.batch("ORE-1").consumed_kg == Decimal("400")
    over = bl_kit.transform(plant, P, [output("CONC-2", "1")], [("ORE-1", "600.000001")])
    rejected(
        bl_kit,
        bl_kit.sign(over, plant.key)[0],
        "overdrawn",
        "'ORE-1'",
        "600 kg left of 1000 kg",
        "600.000001 kg",
    )
    assert bl_kit.batch("ORE-1").consumed_kg == Decimal("400")
    assert bl_kit.led.batch("CONC-2") is None
    bl_kit.ok(bl_kit.transform(plant, P, [output("CONC-2", "1")], [("ORE-1", "600")]), plant.key)
    ore = bl_kit.batch("ORE-1")
    assert ore.consumed_kg == ore.kg and ore.available_kg == 0
    crumb = bl_kit.transform(plant, P, [output("CONC-3", "1")], [("ORE-1", "0.000001")])
    rejected(bl_kit, bl_kit.sign(crumb, plant.key)[0], "overdrawn", "'ORE-1'", "0 kg left")


def test_overdraw_across_events_of_one_append_batch(bl_kit: LedgerKit, plant: Party) -> None:
    bl_kit.extract(plant, "ORE-1", "1000")
    a, _ = bl_kit.sign(bl_kit.transform(plant, P, [output("CONC-1", "1")], [("ORE-1", "700")]), plant.key)
    b, _ = bl_kit.sign(bl_kit.transform(plant, P, [output("CONC-2", "1")], [("ORE-1", "300.5")]), plant.key)
    c, _ = bl_kit.sign(bl_kit.transform(plant, P, [output("CONC-3", "1")], [("ORE-1", "300")]), plant.key)
    res = bl_kit.led.append([a, b, c])
    assert [(r.status, r.reason) for r in res] == [
        ("appended", None),
        ("rejected", "overdrawn"),
        ("appended", None),
    ]
    assert bl_kit.batch("ORE-1").consumed_kg == Decimal("1000")
    assert bl_kit.led.batch("CONC-2") is None


ELEMENTS = [e.value for e in Element]


@pytest.mark.parametrize("element", ELEMENTS)
def test_mass_conservation_at_tolerance_passes_just_above_fails(
    bl_kit: LedgerKit, plant: Party, element: str
) -> None:
    bl_kit.extract(plant, "ORE-1", "1000", **dict.fromkeys(ELEMENTS, "100"))
    limit = Decimal(100) * (1 + MASS_TOLERANCE_REL) + MASS_TOLERANCE_ABS_KG
    assert limit == Decimal("100.501")
    too_much = bl_kit.transform(
        plant, P, [output("CONC-1", "900", **{element: "100.501001"})], [("ORE-1", "1000")]
    )
    rejected(
        bl_kit,
        bl_kit.sign(too_much, plant.key)[0],
        "mass_not_conserved",
        f"100.501001 kg {element}",
        "inputs supply 100 kg",
    )
    assert bl_kit.batch("ORE-1").consumed_kg == 0
    at_limit = bl_kit.transform(
        plant, P, [output("CONC-1", "900", **{element: "100.501"})], [("ORE-1", "1000")]
    )
    bl_kit.ok(at_limit, plant.key)
    assert bl_kit.batch("CONC-1").contained[Element(element)] == Decimal("100.501")


def test_mass_conservation_scales_with_the_share_consumed(bl_kit: LedgerKit, plant: Party) -> None:
    bl_kit.extract(plant, "ORE-1", "1000", li="100")
    # a quarter of the lot supplies 25 kg Li: limit 25 * 1.005 + 0.001 = 25.126, split over two outputs
    over = bl_kit.transform(
        plant, P, [output("A", "100", li="20"), output("B", "100", li="5.126001")], [("ORE-1", "250")]
    )
    rejected(bl_kit, bl_kit.sign(over, plant.key)[0], "mass_not_conserved", "25.126001 kg li", "supply 25 kg")
    ok = bl_kit.transform(
        plant, P, [output("A", "100", li="20"), output("B", "100", li="5.126")], [("ORE-1", "250")]
    )
    bl_kit.ok(ok, plant.key)


def test_mass_from_nothing_only_within_the_absolute_tolerance(bl_kit: LedgerKit, plant: Party) -> None:
    bl_kit.extract(plant, "ORE-1", "1000", li="100")  # no cobalt in it
    over = bl_kit.transform(plant, P, [output("A", "10", co="0.001001")], [("ORE-1", "10")])
    rejected(bl_kit, bl_kit.sign(over, plant.key)[0], "mass_not_conserved", "kg co", "supply 0 kg")
    bl_kit.ok(bl_kit.transform(plant, P, [output("A", "10", co="0.001")], [("ORE-1", "10")]), plant.key)


def test_recycling_external_feed_supplies_mass(bl_kit: LedgerKit, plant: Party) -> None:
    feed = [{"description": "EoL packs", "consumer": "post", "kg": "1000", "contained_kg": {"ni": "10"}}]
    over = bl_kit.transform(plant, R, [output("BM-1", "500", ni="10.051001")], external_feed=feed)
    rejected(bl_kit, bl_kit.sign(over, plant.key)[0], "mass_not_conserved", "kg ni", "supply 10 kg")
    bl_kit.ok(bl_kit.transform(plant, R, [output("BM-1", "500", ni="10.051")], external_feed=feed), plant.key)


def test_batch_exists(bl_kit: LedgerKit, plant: Party) -> None:
    first = bl_kit.extract(plant, "ORE-1", "1000")
    again = bl_kit.transform(plant, E, [output("ORE-1", "5")])
    rejected(bl_kit, bl_kit.sign(again, plant.key)[0], "batch_exists", "'ORE-1'")
    bl_kit.extract(plant, "ORE-2", "10")
    reuse = bl_kit.transform(plant, P, [output("ORE-1", "5")], [("ORE-2", "10")])
    rejected(bl_kit, bl_kit.sign(reuse, plant.key)[0], "batch_exists", "'ORE-1'")
    ore = bl_kit.batch("ORE-1")
    assert (ore.event_id, ore.kg) == (first, Decimal("1000"))
    assert bl_kit.batch("ORE-2").consumed_kg == 0


def test_batch_exists_within_one_append_batch(bl_kit: LedgerKit, plant: Party) -> None:
    a, _ = bl_kit.sign(bl_kit.transform(plant, E, [output("ORE-1", "1")]), plant.key)
    b, _ = bl_kit.sign(bl_kit.transform(plant, E, [output("ORE-1", "2")]), plant.key)
    res = bl_kit.led.append([a, b])
    assert [(r.status, r.reason) for r in res] == [("appended", None), ("rejected", "batch_exists")]
    assert bl_kit.batch("ORE-1").kg == Decimal("1")


def test_cycle(bl_kit: LedgerKit, plant: Party) -> None:
    bl_kit.extract(plant, "ORE-1", "1000")
    loop = bl_kit.transform(plant, P, [output("ORE-1", "10")], [("ORE-1", "10")])
    rejected(bl_kit, bl_kit.sign(loop, plant.key)[0], "cycle", "'ORE-1'", "both input and output")
    assert bl_kit.batch("ORE-1").consumed_kg == 0


# -- stage order -----------------------------------------------------------------------------------
# What may consume what: material only flows forward; cells, modules and packs go back only by recycling.
# Written out independently of ledger.rules.ALLOWED_PARENT_STAGES, which this checks.
FORWARD = {
    P: {E, P, R},
    M: {P, M, R},
    C: {P, M},
    MO: {C, M},
    PA: {C, MO, M},
    R: {P, M, C, MO, PA, R},
}


def test_stage_order_cells_into_processing_refused_recycling_allowed(bl_kit: LedgerKit, plant: Party) -> None:
    bl_kit.extract(plant, "ORE-1", "1000")
    bl_kit.ok(bl_kit.transform(plant, P, [output("PRE-1", "900")], [("ORE-1", "1000")]), plant.key)
    bl_kit.ok(bl_kit.transform(plant, C, [output("CELL-1", "800")], [("PRE-1", "900")]), plant.key)
    back = bl_kit.transform(plant, P, [output("PRE-2", "100")], [("CELL-1", "100")])
    rejected(
        bl_kit,
        bl_kit.sign(back, plant.key)[0],
        "stage_order",
        "batch.processed cannot consume cell-stage batch 'CELL-1'",
        "only through recycling",
    )
    assert bl_kit.batch("CELL-1").consumed_kg == 0
    bl_kit.ok(bl_kit.transform(plant, R, [output("BM-1", "100")], [("CELL-1", "100")]), plant.key)
    assert bl_kit.batch("CELL-1").consumed_kg == Decimal("100")


def test_stage_order_matrix(bl_kit: LedgerKit, plant: Party) -> None:
    parents = {E: "S-EX", P: "S-PR", M: "S-MA", C: "S-CE", MO: "S-MO", PA: "S-PA", R: "S-RE"}
    bl_kit.extract(plant, "S-EX", "1000")
    for kind, source in [(P, E), (M, P), (C, P), (MO, C), (PA, MO), (R, PA)]:
        obj = bl_kit.transform(plant, kind, [output(parents[kind], "1000")], [(parents[source], "50")])
        bl_kit.ok(obj, plant.key)
    n = 0
    for consumer, allowed in FORWARD.items():
        for stage_kind, parent in parents.items():
            n += 1
            obj = bl_kit.transform(plant, consumer, [output(f"OUT-{n}", "1")], [(parent, "1")])
            raw, _ = bl_kit.sign(obj, plant.key)
            if stage_kind in allowed:
                appended(bl_kit.append(raw))
            else:
                rejected(bl_kit, raw, "stage_order", consumer.value, f"'{parent}'")
    assert n == len(FORWARD) * len(parents)


# -- custody -----------------------------------------------------------------------------------------
@pytest.fixture
def mine_and_refinery(bl_kit: LedgerKit) -> tuple[Party, Party]:
    mine = bl_kit.register("mine-1", [E], country="AU")
    ref = bl_kit.register("ref-1", [P])
    bl_kit.extract(mine, "ORE-1", "1000")
    return mine, ref


def test_not_custodian_consuming_without_receiving(
    bl_kit: LedgerKit, mine_and_refinery: tuple[Party, Party]
) -> None:
    mine, ref = mine_and_refinery
    use = bl_kit.transform(ref, P, [output("CONC-1", "10")], [("ORE-1", "100")])
    rejected(
        bl_kit,
        bl_kit.sign(use, ref.key)[0],
        "not_custodian",
        "ref-1 holds 0 kg of 'ORE-1'",
        "ship and receive",
    )
    bl_kit.ok(bl_kit.shipment(mine, "ORE-1", "600", "ref-1"), mine.key)
    # shipped but not yet received: still not the custodian
    rejected(
        bl_kit,
        bl_kit.sign(bl_kit.transform(ref, P, [output("CONC-1", "10")], [("ORE-1", "100")]), ref.key)[0],
        "not_custodian",
        "ref-1",
    )
    bl_kit.ok(bl_kit.receipt(ref, "ORE-1", "600", "mine-1"), ref.key)
    over = bl_kit.transform(ref, P, [output("CONC-1", "10")], [("ORE-1", "600.000001")])
    rejected(bl_kit, bl_kit.sign(over, ref.key)[0], "not_custodian", "ref-1 holds 600 kg")
    bl_kit.ok(bl_kit.transform(ref, P, [output("CONC-1", "10")], [("ORE-1", "600")]), ref.key)
    ore = bl_kit.batch("ORE-1")
    assert ore.consumed_kg == Decimal("600")
    assert ore.holders == {"mine-1": Decimal("400"), "ref-1": Decimal("0")}


def test_not_custodian_shipping_more_than_held(
    bl_kit: LedgerKit, mine_and_refinery: tuple[Party, Party]
) -> None:
    mine, ref = mine_and_refinery
    too_much = bl_kit.shipment(mine, "ORE-1", "1000.000001", "ref-1")
    rejected(
        bl_kit,
        bl_kit.sign(too_much, mine.key)[0],
        "not_custodian",
        "mine-1 holds 1000 kg of ORE-1",
        "1000.000001",
    )
    ore = bl_kit.batch("ORE-1")
    assert ore.holders == {"mine-1": Decimal("1000")} and ore.in_transit == {}
    # a facility that never held it cannot ship it
    rejected(
        bl_kit,
        bl_kit.sign(bl_kit.shipment(ref, "ORE-1", "1", "mine-1"), ref.key)[0],
        "not_custodian",
        "ref-1 holds 0 kg",
    )
    bl_kit.ok(bl_kit.shipment(mine, "ORE-1", "1000", "ref-1"), mine.key)
    ore = bl_kit.batch("ORE-1")
    assert ore.holders == {"mine-1": Decimal("0")} and ore.in_transit == {"ref-1": Decimal("1000")}


def test_not_custodian_receiving_without_a_shipment(
    bl_kit: LedgerKit, mine_and_refinery: tuple[Party, Party]
) -> None:
    mine, ref = mine_and_refinery
    rejected(
        bl_kit,
        bl_kit.sign(bl_kit.receipt(ref, "ORE-1", "100", "mine-1"), ref.key)[0],
        "not_custodian",
        "only 0 kg of ORE-1 is in transit to ref-1",
        "cannot receive 100 kg",
    )
    bl_kit.ok(bl_kit.shipment(mine, "ORE-1", "100", "ref-1"), mine.key)
    rejected(
        bl_kit,
        bl_kit.sign(bl_kit.receipt(ref, "ORE-1", "100.5", "mine-1"), ref.key)[0],
        "not_custodian",
        "only 100 kg",
    )
    assert bl_kit.batch("ORE-1").holders == {"mine-1": Decimal("900")}
    bl_kit.ok(bl_kit.receipt(ref, "ORE-1", "100", "mine-1"), ref.key)
    ore = bl_kit.batch("ORE-1")
    assert ore.holders == {"mine-1": Decimal("900"), "ref-1": Decimal("100")}
    assert ore.in_transit == {"ref-1": Decimal("0")}


def test_shipping_to_an_unregistered_facility(
    bl_kit: LedgerKit, mine_and_refinery: tuple[Party, Party]
) -> None:
    mine, _ = mine_and_refinery
    ship = bl_kit.shipment(mine, "ORE-1", "10", "nowhere-9")
    rejected(bl_kit, bl_kit.sign(ship, mine.key)[0], "unknown_facility", "consignee 'nowhere-9'")
    assert bl_kit.batch("ORE-1").holders == {"mine-1": Decimal("1000")}


def test_only_the_producer_certifies_its_batches(
    bl_kit: LedgerKit, mine_and_refinery: tuple[Party, Party]
) -> None:
    mine, ref = mine_and_refinery
    cert: dict[str, Any] = {
        "spec": SPEC,
        "kind": "supplier.certified",
        "facility_id": "ref-1",
        "time": bl_kit.tick(),
        "batch_ids": ["ORE-1"],
        "statement": "not_prohibited_foreign_entity",
    }
    rejected(bl_kit, bl_kit.sign(cert, ref.key)[0], "not_custodian", "ref-1 did not produce batch 'ORE-1'")
    bl_kit.ok(dict(cert, facility_id="mine-1"), mine.key)


# -- corrections -------------------------------------------------------------------------------------
def _correction(kit: LedgerKit, party: Party, target: str) -> dict[str, Any]:
    return {
        "spec": SPEC,
        "kind": "correction",
        "facility_id": party.facility_id,
        "time": kit.tick(),
        "corrects": target,
        "reason": "incorrect_data",
        "explanation": "assay re-run: Li content was 2.7%",
    }


def test_correction_target_missing(bl_kit: LedgerKit) -> None:
    mine = bl_kit.register("mine-1", [E])
    missing = "ab" * 32
    rejected(
        bl_kit,
        bl_kit.sign(_correction(bl_kit, mine, missing), mine.key)[0],
        "correction_target_missing",
        missing,
    )
    # a rejected event is not a ledger event either
    bad = bl_kit.transform(mine, P, [output("X-1", "1")], [("NOPE", "1")])
    bad_raw, bad_id = bl_kit.sign(bad, mine.key)
    assert bl_kit.append(bad_raw).status == "rejected"
    rejected(
        bl_kit,
        bl_kit.sign(_correction(bl_kit, mine, bad_id), mine.key)[0],
        "correction_target_missing",
        bad_id,
    )


def test_correction_appends_and_never_changes_the_corrected_entry(bl_kit: LedgerKit) -> None:
    mine = bl_kit.register("mine-1", [E])
    target = bl_kit.extract(mine, "ORE-1", "1000", li="30")
    before = bl_kit.led.entry_data([target])
    batch_before = bl_kit.batch("ORE-1")
    size = bl_kit.led.size
    cid = bl_kit.ok(_correction(bl_kit, mine, target), mine.key)
    assert bl_kit.led.size == size + 1
    assert bl_kit.led.entry_data([target]) == before
    assert bl_kit.batch("ORE-1") == batch_before
    seq, data = bl_kit.led.entry_data([cid])[cid]
    assert seq == size and json.loads(data)["corrects"] == target
    # corrections chain: a correction may itself be corrected
    bl_kit.ok(_correction(bl_kit, mine, cid), mine.key)


# -- children before parents ---------------------------------------------------------------------------
def test_parents_timeout(bl_kit: LedgerKit, plant: Party) -> None:
    child = bl_kit.transform(plant, P, [output("CONC-1", "10")], [("LATE-1", "10")])
    raw, eid = bl_kit.sign(child, plant.key)
    res = bl_kit.append(raw, park=True)
    assert (res.status, res.event_id, res.reason) == ("parked", eid, "unknown_input")
    assert bl_kit.led.parked_count() == 1
    assert bl_kit.rejections() == []
    assert bl_kit.led.decisions([eid]) == {eid: ("parked", None, None, None)}
    size = bl_kit.led.size
    [expired] = bl_kit.led.expire_parked(timedelta(0))
    assert (expired.status, expired.event_id, expired.reason) == ("rejected", eid, "parents_timeout")
    assert expired.detail is not None and "LATE-1" in expired.detail
    assert bl_kit.led.parked_count() == 0 and bl_kit.led.size == size
    [row] = bl_kit.rejections()
    assert (row.event_id, row.reason, row.detail) == (eid, "parents_timeout", expired.detail)
    assert bytes(row.raw) == raw
    assert bl_kit.led.expire_parked(timedelta(0)) == []


def test_parked_event_is_kept_until_it_is_old_enough(bl_kit: LedgerKit, plant: Party) -> None:
    raw, _ = bl_kit.sign(bl_kit.transform(plant, P, [output("C-1", "1")], [("LATE-1", "1")]), plant.key)
    assert bl_kit.append(raw, park=True).status == "parked"
    assert bl_kit.led.expire_parked(timedelta(hours=1)) == []
    assert bl_kit.led.parked_count() == 1


def test_parents_timeout_keeps_the_original_bytes(bl_kit: LedgerKit, plant: Party) -> None:
    raw, _ = bl_kit.sign(bl_kit.transform(plant, P, [output("C-1", "1")], [("LATE-1", "1")]), plant.key)
    as_sent = json.dumps(json.loads(raw), indent=2).encode()  # what the plant's client put on the wire
    assert bl_kit.append(as_sent, park=True).status == "parked"
    bl_kit.led.expire_parked(timedelta(0))
    [row] = bl_kit.rejections()
    assert bytes(row.raw) == as_sent


def test_parked_child_is_appended_when_its_parent_arrives(bl_kit: LedgerKit, plant: Party) -> None:
    parent_obj = bl_kit.transform(plant, E, [output("ORE-1", "100")])
    child_raw, child_id = bl_kit.sign(
        bl_kit.transform(plant, P, [output("C-1", "1")], [("ORE-1", "40")]), plant.key
    )
    parent_raw, parent_id = bl_kit.sign(parent_obj, plant.key)
    assert bl_kit.append(child_raw, park=True).status == "parked"
    results = bl_kit.led.append([parent_raw], park=True)
    # one result per item, in order, then one per parked event the batch released
    assert [(r.event_id, r.status) for r in results] == [(parent_id, "appended"), (child_id, "appended")]
    assert bl_kit.led.parked_count() == 0
    assert bl_kit.batch("ORE-1").consumed_kg == Decimal("40")


def test_child_before_parent_in_one_batch(bl_kit: LedgerKit, plant: Party) -> None:
    child_raw, child_id = bl_kit.sign(
        bl_kit.transform(plant, P, [output("C-1", "1")], [("ORE-1", "40")]), plant.key
    )
    parent_raw, parent_id = bl_kit.sign(bl_kit.transform(plant, E, [output("ORE-1", "100")]), plant.key)
    results = bl_kit.led.append([child_raw, parent_raw], park=True)
    # one result per item, in item order: the child waited for its parent within the call
    assert [(r.event_id, r.status) for r in results] == [(child_id, "appended"), (parent_id, "appended")]
    assert results[0].seq == results[1].seq + 1  # type: ignore[operator]
    assert bl_kit.led.decisions([child_id])[child_id][0] == "appended"


def test_without_park_a_missing_parent_is_unknown_input(bl_kit: LedgerKit, plant: Party) -> None:
    raw, _ = bl_kit.sign(bl_kit.transform(plant, P, [output("C-1", "1")], [("LATE-1", "1")]), plant.key)
    rejected(bl_kit, raw, "unknown_input", "'LATE-1'")
    assert bl_kit.led.parked_count() == 0


# -- decode-stage reasons, through the ledger ----------------------------------------------------------
def _signed_obj(kit: LedgerKit, party: Party) -> dict[str, Any]:
    obj: dict[str, Any] = json.loads(kit.sign(kit.transform(party, E, [output("ORE-9", "1")]), party.key)[0])
    return obj


def test_malformed(bl_kit: LedgerKit) -> None:
    for raw in (b'{"spec": "batteryledger/1", "kind": "batch.extr', b"[]", b"\xff\xfe"):
        res = rejected(bl_kit, raw, "malformed")
        assert res.event_id is None


def test_deeply_nested_json_is_a_rejection_not_a_crash(bl_kit: LedgerKit) -> None:
    rejected(bl_kit, b"[" * 5000, "malformed")


def test_oversized(bl_kit: LedgerKit) -> None:
    res = rejected(bl_kit, b" " * (MAX_EVENT_BYTES + 1), "oversized", str(MAX_EVENT_BYTES))
    assert res.event_id is None


def test_missing_signature_unknown_kind_schema_invalid(bl_kit: LedgerKit) -> None:
    mine = bl_kit.register("mine-1", [E])
    unsigned = _signed_obj(bl_kit, mine)
    del unsigned["sig"]
    rejected(bl_kit, json.dumps(unsigned).encode(), "missing_signature", '"sig"')
    odd = _signed_obj(bl_kit, mine)
    odd["kind"] = "batch.teleported"
    rejected(bl_kit, json.dumps(odd).encode(), "unknown_kind", "batch.teleported")
    floaty = bl_kit.transform(mine, E, [output("ORE-9", "1")])
    floaty["outputs"][0]["kg"] = 1.5
    rejected(bl_kit, sign_object(floaty, mine.key)[0], "schema_invalid", "outputs.0.kg")
    assert bl_kit.led.batch("ORE-9") is None


def test_upstream_rejections_are_recorded_with_their_bytes(bl_kit: LedgerKit) -> None:
    """The verify stage decides (e.g. CloudEvents headers disagree); the ledger records it."""
    err = EventError(Reason.HEADER_MISMATCH, "ce_id 'x' is not the event id")
    bl_kit.led.record_rejections([Incoming(raw=b"{...}", error=err, source="material-events/0/42")])
    [row] = bl_kit.rejections()
    assert (row.reason, row.detail, bytes(row.raw), row.source) == (
        "header_mismatch",
        err.detail,
        b"{...}",
        "material-events/0/42",
    )
    decided = bl_kit.led.decisions(sources=["material-events/0/42"])
    assert decided == {"material-events/0/42": ("rejected", None, "header_mismatch", err.detail)}


# -- a rejection changes nothing, also for other readers -----------------------------------------------
def test_rejections_survive_reopening_and_change_no_state(bl_kit: LedgerKit, plant: Party) -> None:
    bl_kit.extract(plant, "ORE-1", "1000", li="10")
    before = bl_kit.batch("ORE-1")
    bad = [
        bl_kit.transform(plant, P, [output("C-1", "1")], [("ORE-1", "1000.5")]),  # overdrawn
        bl_kit.transform(plant, P, [output("C-2", "100", li="11")], [("ORE-1", "1000")]),  # mass
        bl_kit.transform(plant, P, [output("ORE-1", "1")], [("ORE-1", "1")]),  # cycle
    ]
    raws = [bl_kit.sign(o, plant.key) for o in bad]
    results = bl_kit.led.append([r for r, _ in raws])
    assert [r.reason for r in results] == ["overdrawn", "mass_not_conserved", "cycle"]
    led = bl_kit.reopen()
    assert led.batch("ORE-1") == before
    assert led.batch("C-1") is None and led.batch("C-2") is None
    decided = led.decisions([eid for _, eid in raws])
    assert [decided[eid][2] for _, eid in raws] == ["overdrawn", "mass_not_conserved", "cycle"]
    with led.engine.connect() as conn:
        stored = {r.event_id: bytes(r.raw) for r in conn.execute(select(REJECTIONS))}
    assert stored == {eid: raw for raw, eid in raws}
    assert led.stats()["rejections"] == {"cycle": 1, "mass_not_conserved": 1, "overdrawn": 1}


def test_the_readme_documents_every_reason_code_and_the_tolerances() -> None:
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    table = text[text.index("### Reason codes") :]
    table = table[: table.index("\n## ")]
    for reason in Reason:
        assert f"`{reason.value}`" in table, f"README reason table lacks {reason.value}"
    assert Decimal("0.005") == MASS_TOLERANCE_REL and Decimal("0.001") == MASS_TOLERANCE_ABS_KG
    assert "tolerance 0.5% + 1 g" in table
    assert timedelta(seconds=30) == PARK_MAX_AGE and PARK_MAX_EVENTS == 100_000
    assert "up to 30 s and 100,000 events" in table


def test_every_ledger_reason_code_is_covered_here() -> None:
    """Reasons the ledger can give; a new code in schemas/reasons.py must get a test in this file."""
    produced_here = {
        "malformed", "oversized", "missing_signature", "unknown_kind", "schema_invalid", "header_mismatch",
        "unknown_facility", "unknown_key", "key_not_valid_at_event_time", "key_revoked", "bad_signature",
        "role_not_allowed", "duplicate_conflict", "unknown_input", "overdrawn", "mass_not_conserved",
        "batch_exists", "cycle", "stage_order", "not_custodian", "facility_exists",
        "correction_target_missing", "parents_timeout",
    }  # fmt: skip
    not_producible = {
        "missing_headers": "CloudEvents stage only (tests/unit/test_cloudevents.py)",
        "unauthenticated": "verified hop only (tests/unit/test_intake.py, tests/integration/test_hostile_input.py)",
        "internal_error": "a bug by definition; no input should produce it",
    }
    assert produced_here | set(not_producible) == {r.value for r in Reason}
    source = Path(__file__).read_text()
    for code in produced_here:
        assert source.count(f'"{code}"') >= 2, f"no test asserts {code}"
