"""The facility registry: dated attestations, key validity, and state rebuilt from the ledger alone."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from ledger.registry import AUTHORITY_ROLES, FacilityRecord, KeyRecord, Registry
from ledger.store import ENTRIES, FACILITIES
from schemas.events import Attestation, Kind
from schemas.signing import decode, generate_key, key_id
from tests.unit.ledger_kit import REGISTERED, T0, LedgerKit, iso, output

E, P = Kind.BATCH_EXTRACTED, Kind.BATCH_PROCESSED
D1 = datetime(2025, 3, 1, tzinfo=UTC)
D2 = datetime(2025, 6, 1, tzinfo=UTC)


def att(feoc: bool, as_of: datetime, pfe: bool = False) -> Attestation:
    return Attestation(feoc=feoc, prohibited_foreign_entity=pfe, as_of=as_of)


def record(*atts: tuple[Attestation, str]) -> FacilityRecord:
    return FacilityRecord("ref-1", "Refinery Ltd", "CN", frozenset({P}), list(atts))


# -- attestation_at --------------------------------------------------------------------------------
def test_attestation_at_picks_the_newest_not_after_the_time() -> None:
    rec = record((att(False, REGISTERED), "e0"), (att(True, D1, pfe=True), "e1"), (att(False, D2), "e2"))
    assert rec.attestation_at(D1 - timedelta(microseconds=1)) == (att(False, REGISTERED), "e0")
    assert rec.attestation_at(D1) == (att(True, D1, pfe=True), "e1")  # from the date on
    assert rec.attestation_at(D2 - timedelta(seconds=1))[1] == "e1"  # type: ignore[index]
    assert rec.attestation_at(D2)[1] == "e2"  # type: ignore[index]
    assert rec.attestation_at(datetime(2030, 1, 1, tzinfo=UTC))[1] == "e2"  # type: ignore[index]
    assert [rec.feoc_at(t) for t in (REGISTERED, D1, D2)] == [False, True, False]
    assert [rec.pfe_at(t) for t in (REGISTERED, D1, D2)] == [False, True, False]


def test_attestation_order_of_arrival_does_not_matter() -> None:
    """A back-dated attestation appended later still governs its own period only."""
    rec = record((att(False, REGISTERED), "e0"), (att(False, D2), "e2"), (att(True, D1), "e1"))
    assert rec.attestation_at(D1 + timedelta(days=1))[1] == "e1"  # type: ignore[index]
    assert rec.attestation_at(D2 + timedelta(days=1))[1] == "e2"  # type: ignore[index]


def test_before_every_attestation_the_oldest_one_applies() -> None:
    rec = record((att(True, D2), "e2"), (att(False, D1), "e1"))
    assert rec.attestation_at(REGISTERED) == (att(False, D1), "e1")
    assert record().attestation_at(D1) is None
    assert record().feoc_at(D1) is False


def test_same_as_of_the_later_attestation_wins() -> None:
    rec = record((att(False, D1), "first"), (att(True, D1), "second"))
    assert rec.attestation_at(D1) == (att(True, D1), "second")


# -- key records ---------------------------------------------------------------------------------------
def test_key_validity_window_is_half_open() -> None:
    k = generate_key()
    rec = KeyRecord("f", key_id(k.public_key()), k.public_key(), valid_from=D1, valid_until=D2)
    assert not rec.valid_at(D1 - timedelta(microseconds=1))
    assert rec.valid_at(D1) and rec.valid_at(D2 - timedelta(microseconds=1))
    assert not rec.valid_at(D2)
    assert not rec.revoked_by(D2)
    rec.revoked_at = D1 + timedelta(days=1)
    assert not rec.revoked_by(D1) and rec.revoked_by(D1 + timedelta(days=1))


# -- through the ledger ------------------------------------------------------------------------------
def test_feoc_flips_from_the_attested_date_on(bl_kit: LedgerKit) -> None:
    ref = bl_kit.register("ref-1", [E], country="CN")
    bl_kit.ok(bl_kit.attestation("ref-1", feoc=True, as_of=D1), bl_kit.op)
    before = bl_kit.transform(ref, E, [output("B-BEFORE", "10")], time=iso(D1 - timedelta(seconds=1)))
    at = bl_kit.transform(ref, E, [output("B-AT", "10")], time=iso(D1))
    after = bl_kit.transform(ref, E, [output("B-AFTER", "10")], time=iso(D1 + timedelta(days=30)))
    for obj in (before, at, after):
        bl_kit.ok(obj, ref.key)
    assert bl_kit.batch("B-BEFORE").feoc is False
    assert bl_kit.batch("B-AT").feoc is True
    assert bl_kit.batch("B-AFTER").feoc is True
    fac = bl_kit.led.registry.facilities["ref-1"]
    assert [a.feoc for a, _ in fac.attestations] == [False, True]


def test_a_batch_keeps_the_status_of_its_own_time(bl_kit: LedgerKit) -> None:
    """A later attestation does not rewrite batches made before it was appended."""
    ref = bl_kit.register("ref-1", [E], country="CN")
    bl_kit.ok(bl_kit.transform(ref, E, [output("EARLY", "10")], time=iso(D1 - timedelta(days=1))), ref.key)
    bl_kit.ok(bl_kit.attestation("ref-1", feoc=True, as_of=D1), bl_kit.op)
    bl_kit.ok(bl_kit.transform(ref, E, [output("LATE", "10")], time=iso(D1 + timedelta(days=1))), ref.key)
    assert (bl_kit.batch("EARLY").feoc, bl_kit.batch("LATE").feoc) == (False, True)
    bl_kit.ok(bl_kit.attestation("ref-1", feoc=False, as_of=D2), bl_kit.op)  # divested
    bl_kit.ok(bl_kit.transform(ref, E, [output("CLEAN", "10")], time=iso(D2)), ref.key)
    assert bl_kit.batch("CLEAN").feoc is False
    assert bl_kit.batch("LATE").feoc is True


def test_registry_is_rebuilt_from_the_store(bl_kit: LedgerKit) -> None:
    mine = bl_kit.register("mine-1", [E])
    new = generate_key()
    bl_kit.ok(bl_kit.rotation(mine, new, valid_from=T0, retire_key_id=mine.key_id), bl_kit.op)
    bl_kit.ok(bl_kit.revocation(mine, key_id(new.public_key()), revoked_at=T0 + timedelta(days=2)), bl_kit.op)
    bl_kit.ok(bl_kit.attestation("mine-1", feoc=True, as_of=D1), bl_kit.op)
    led = bl_kit.reopen()
    assert led.load_errors == []
    old_rec = led.registry.keys[("mine-1", mine.key_id)]
    new_rec = led.registry.keys[("mine-1", key_id(new.public_key()))]
    assert old_rec.valid_until == T0
    assert new_rec.revoked_at == T0 + timedelta(days=2)
    assert led.registry.facilities["mine-1"].feoc_at(D1) is True
    # the reopened ledger enforces what it rebuilt
    revoked = bl_kit.transform(mine, E, [output("ORE-1", "1")], time=iso(T0 + timedelta(days=3)))
    res = bl_kit.submit(revoked, new)
    assert (res.status, res.reason) == ("rejected", "key_revoked")
    retired = bl_kit.transform(mine, E, [output("ORE-1", "1")], time=iso(T0 + timedelta(hours=1)))
    res = bl_kit.submit(retired, mine.key)
    assert (res.status, res.reason) == ("rejected", "key_not_valid_at_event_time")
    bl_kit.ok(retired, new)  # before the revocation, under the new key: valid


def test_registry_from_events_equals_the_ledgers_registry(bl_kit: LedgerKit) -> None:
    mine = bl_kit.register("mine-1", [E])
    bl_kit.register("ref-1", [P], country="CN")
    bl_kit.ok(bl_kit.attestation("ref-1", feoc=True, as_of=D1), bl_kit.op)
    bl_kit.ok(bl_kit.rotation(mine, generate_key(), valid_from=T0), bl_kit.op)
    with bl_kit.led.engine.connect() as conn:
        rows = conn.execute(select(ENTRIES.c.event_id, ENTRIES.c.data).order_by(ENTRIES.c.seq)).all()
    rebuilt = Registry.from_events((decode(bytes(r.data)).event, r.event_id) for r in rows)
    live = bl_kit.led.registry
    assert rebuilt.facilities == live.facilities
    assert {k: (v.valid_from, v.valid_until, v.revoked_at) for k, v in rebuilt.keys.items()} == {
        k: (v.valid_from, v.valid_until, v.revoked_at) for k, v in live.keys.items()
    }
    assert len(rebuilt.keys) == 4  # registry, mine (2), ref


def test_a_second_revocation_never_extends_a_key(bl_kit: LedgerKit) -> None:
    mine = bl_kit.register("mine-1", [E])
    first = T0 + timedelta(days=1)
    bl_kit.ok(bl_kit.revocation(mine, mine.key_id, revoked_at=first), bl_kit.op)
    later = bl_kit.revocation(mine, mine.key_id, revoked_at=first + timedelta(days=5))
    later["time"] = iso(first + timedelta(days=6))
    bl_kit.ok(later, bl_kit.op)
    assert bl_kit.led.registry.keys[("mine-1", mine.key_id)].revoked_at == first
    res = bl_kit.submit(
        bl_kit.transform(mine, E, [output("ORE-1", "1")], time=iso(first + timedelta(days=2))), mine.key
    )
    assert res.reason == "key_revoked"


def test_the_authority_bootstraps_itself_once(bl_kit: LedgerKit) -> None:
    authority = bl_kit.led.registry.facilities["registry"]
    assert set(AUTHORITY_ROLES) <= authority.roles
    assert bl_kit.led.size == 1
    again = bl_kit.registration("registry", [Kind.FACILITY_REGISTERED], generate_key(), nonce="coup")
    res = bl_kit.submit(again, bl_kit.op)
    assert (res.status, res.reason) == ("rejected", "facility_exists")
    # someone else's self-registration as the authority is just an unknown signer
    usurper = generate_key()
    res = bl_kit.submit(
        bl_kit.registration("registry", [Kind.FACILITY_REGISTERED], usurper, nonce="x"), usurper
    )
    assert (res.status, res.reason) == ("rejected", "unknown_key")


def test_facilities_view_lists_keys_and_roles(bl_kit: LedgerKit) -> None:
    mine = bl_kit.register("mine-1", [E], country="AU")
    revoked_at = T0 + timedelta(days=1)
    bl_kit.ok(bl_kit.revocation(mine, mine.key_id, revoked_at=revoked_at), bl_kit.op)
    with bl_kit.led.engine.connect() as conn:
        row = conn.execute(select(FACILITIES).where(FACILITIES.c.facility_id == "mine-1")).one()
    assert row.country == "AU"
    assert "batch.extracted" in json.loads(row.roles) and "batch.processed" not in json.loads(row.roles)
    [k] = json.loads(row.keys)
    assert k["key_id"] == mine.key_id
    assert datetime.fromisoformat(k["revoked_at"]) == revoked_at


@pytest.mark.parametrize("feoc", [True, False])
def test_registration_attestation_applies_from_registration(bl_kit: LedgerKit, feoc: bool) -> None:
    ref = bl_kit.register("ref-1", [E], country="CN", feoc=feoc)
    bl_kit.ok(bl_kit.transform(ref, E, [output("B-1", "1")]), ref.key)
    assert bl_kit.batch("B-1").feoc is feoc
    assert bl_kit.batch("B-1").country == "CN"
