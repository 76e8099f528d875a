"""Test helpers for the wire-contract and append-rule unit tests: a real ledger plus event builders.

`LedgerKit` wraps a Ledger on a SQLite file with the registry authority's key, and builds, signs and
appends events the way a plant and the authority would. The `bl_kit` fixture (tests/unit/conftest.py)
hands one out per test; tests import the builders from here, never from a conftest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select

from batteryledger.sample import PRODUCER_ROLES
from ledger.core import AppendResult, Ledger
from ledger.rules import BatchState
from ledger.store import REJECTIONS
from schemas.events import SPEC, Kind
from schemas.signing import generate_key, key_id, public_key_b64, sign_object

#: Registrations are dated here; chain events start at T0 and move forward one hour per event.
REGISTERED = datetime(2024, 1, 1, tzinfo=UTC)
T0 = datetime(2025, 1, 6, tzinfo=UTC)


def iso(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Party:
    """A registered facility and the private key it signs with."""

    facility_id: str
    key: Ed25519PrivateKey
    roles: list[Kind]
    country: str = "US"

    @property
    def key_id(self) -> str:
        return key_id(self.key.public_key())


@dataclass
class LedgerKit:
    """A ledger on a SQLite file, with the registry authority's key and event builders."""

    url: str
    op: Ed25519PrivateKey
    led: Ledger
    clock: datetime = T0
    parties: dict[str, Party] = field(default_factory=dict)

    # -- time and signing ------------------------------------------------------------------------
    def tick(self, hours: float = 1) -> str:
        self.clock += timedelta(hours=hours)
        return iso(self.clock)

    def sign(self, obj: dict[str, Any], key: Ed25519PrivateKey) -> tuple[bytes, str]:
        return sign_object(obj, key)

    def append(self, raw: bytes, **kw: Any) -> AppendResult:
        [res] = self.led.append([raw], **kw)
        return res

    def submit(self, obj: dict[str, Any], key: Ed25519PrivateKey, **kw: Any) -> AppendResult:
        return self.append(self.sign(obj, key)[0], **kw)

    def ok(self, obj: dict[str, Any], key: Ed25519PrivateKey) -> str:
        """Sign and append; the event must be appended. Returns its event id."""
        res = self.submit(obj, key)
        assert res.status == "appended", (res, obj)
        assert res.event_id is not None
        return res.event_id

    # -- registry events (signed by the authority) -----------------------------------------------
    def registration(
        self,
        facility_id: str,
        roles: Sequence[Kind],
        key: Ed25519PrivateKey,
        *,
        country: str = "US",
        feoc: bool = False,
        valid_from: datetime = REGISTERED,
        time: datetime = REGISTERED,
        nonce: str | None = None,
        producer_roles: bool = True,
    ) -> dict[str, Any]:
        all_roles = {*roles, *PRODUCER_ROLES} if producer_roles else set(roles)
        return {
            "spec": SPEC,
            "kind": Kind.FACILITY_REGISTERED.value,
            "facility_id": "registry",
            "time": iso(time),
            "nonce": nonce or facility_id,
            "subject_facility_id": facility_id,
            "legal_entity": f"{facility_id} Ltd",
            "country": country,
            "roles": sorted(r.value for r in all_roles),
            "attestation": {"feoc": feoc, "as_of": iso(REGISTERED)},
            "key": key_info(key, valid_from),
        }

    def register(self, facility_id: str, roles: Sequence[Kind], *, country: str = "US", **kw: Any) -> Party:
        key = kw.pop("key", None) or generate_key()
        self.ok(self.registration(facility_id, roles, key, country=country, **kw), self.op)
        party = Party(facility_id, key, list(roles), country)
        self.parties[facility_id] = party
        return party

    def rotation(
        self,
        party: Party,
        new_key: Ed25519PrivateKey,
        *,
        valid_from: datetime,
        retire_key_id: str | None = None,
        retire_at: datetime | None = None,
    ) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "spec": SPEC,
            "kind": Kind.KEY_ROTATED.value,
            "facility_id": "registry",
            "time": iso(valid_from),
            "subject_facility_id": party.facility_id,
            "key": key_info(new_key, valid_from),
        }
        if retire_key_id:
            obj["retire_key_id"] = retire_key_id
        if retire_at:
            obj["retire_at"] = iso(retire_at)
        return obj

    def revocation(self, party: Party, kid: str, *, revoked_at: datetime) -> dict[str, Any]:
        return {
            "spec": SPEC,
            "kind": Kind.KEY_REVOKED.value,
            "facility_id": "registry",
            "time": iso(revoked_at),
            "subject_facility_id": party.facility_id,
            "key_id": kid,
            "revoked_at": iso(revoked_at),
            "reason": "compromised",
        }

    def attestation(self, facility_id: str, *, feoc: bool, as_of: datetime) -> dict[str, Any]:
        return {
            "spec": SPEC,
            "kind": Kind.FACILITY_ATTESTED.value,
            "facility_id": "registry",
            "time": iso(as_of),
            "subject_facility_id": facility_id,
            "attestation": {"feoc": feoc, "as_of": iso(as_of), "evidence": "ownership filing"},
        }

    # -- plant events ----------------------------------------------------------------------------
    def transform(
        self,
        party: Party,
        kind: Kind,
        outputs: Sequence[dict[str, Any]],
        inputs: Sequence[tuple[str, str]] = (),
        *,
        time: str | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "spec": SPEC,
            "kind": kind.value,
            "facility_id": party.facility_id,
            "time": time or self.tick(),
        }
        if inputs:
            obj["inputs"] = [{"batch_id": b, "kg": kg} for b, kg in inputs]
        obj["outputs"] = [dict(o) for o in outputs]
        obj.update(extra)
        return obj

    def extract(self, party: Party, batch_id: str, kg: str, **contained: str) -> str:
        """Append an extraction of one batch; returns the event id."""
        return self.ok(
            self.transform(party, Kind.BATCH_EXTRACTED, [output(batch_id, kg, **contained)]), party.key
        )

    def shipment(self, party: Party, batch_id: str, kg: str, to: str) -> dict[str, Any]:
        return {
            "spec": SPEC,
            "kind": Kind.BATCH_SHIPPED.value,
            "facility_id": party.facility_id,
            "time": self.tick(),
            "batch_id": batch_id,
            "kg": kg,
            "to_facility_id": to,
        }

    def receipt(self, party: Party, batch_id: str, kg: str, frm: str) -> dict[str, Any]:
        return {
            "spec": SPEC,
            "kind": Kind.BATCH_RECEIVED.value,
            "facility_id": party.facility_id,
            "time": self.tick(),
            "batch_id": batch_id,
            "kg": kg,
            "from_facility_id": frm,
        }

    # -- what the store holds --------------------------------------------------------------------
    def rejections(self) -> list[Any]:
        with self.led.engine.connect() as conn:
            return list(conn.execute(select(REJECTIONS).order_by(REJECTIONS.c.id)))

    def batch(self, batch_id: str) -> BatchState:
        b = self.led.batch(batch_id)
        assert b is not None, f"batch {batch_id} not in the ledger"
        return b

    def reopen(self) -> Ledger:
        """A second Ledger object on the same file: state rebuilt from the store alone."""
        self.led.close()
        self.led = Ledger(self.url, operator_key=self.op)
        return self.led


def key_info(key: Ed25519PrivateKey, valid_from: datetime) -> dict[str, str]:
    return {
        "key_id": key_id(key.public_key()),
        "public_key": public_key_b64(key.public_key()),
        "valid_from": iso(valid_from),
    }


def output(batch_id: str, kg: str, material: str = "ore", **contained: str) -> dict[str, Any]:
    o: dict[str, Any] = {"batch_id": batch_id, "material": material, "kg": kg}
    if contained:
        o["contained_kg"] = dict(contained)
    return o
