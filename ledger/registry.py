"""The facility registry: who may sign what, with which key, when.

Registry state is derived only from registry events in the ledger (facility registered / attested,
key rotated / revoked), so "was this key valid when it signed?" is answered from the ledger itself and
the offline verifier can rebuild the same state from the events in an evidence bundle.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from schemas.events import (
    REGISTRY_FACILITY_ID,
    REGISTRY_KINDS,
    Attestation,
    Event,
    FacilityAttested,
    FacilityRegistered,
    KeyRevoked,
    KeyRotated,
    Kind,
    PublicKeyInfo,
)
from schemas.reasons import EventError, Reason
from schemas.signing import DecodedEvent, key_id, public_bytes, public_key_from_b64, verify_signature

AUTHORITY_ROLES: tuple[Kind, ...] = (*sorted(REGISTRY_KINDS), Kind.CORRECTION)


@dataclass(slots=True)
class KeyRecord:
    facility_id: str
    key_id: str
    public_key: Ed25519PublicKey
    valid_from: datetime
    valid_until: datetime | None = None
    revoked_at: datetime | None = None
    raw: bytes = b""  # the 32 raw public-key bytes, kept so the verify path does not re-encode per event

    def __post_init__(self) -> None:
        if not self.raw:
            self.raw = public_bytes(self.public_key)

    def valid_at(self, when: datetime) -> bool:
        if when < self.valid_from:
            return False
        return self.valid_until is None or when < self.valid_until

    def revoked_by(self, when: datetime) -> bool:
        return self.revoked_at is not None and when >= self.revoked_at


@dataclass(slots=True)
class FacilityRecord:
    facility_id: str
    legal_entity: str
    country: str
    roles: frozenset[Kind]
    attestations: list[tuple[Attestation, str]] = field(default_factory=list)  # (attestation, event id)

    def attestation_at(self, when: datetime) -> tuple[Attestation, str] | None:
        """The newest attestation whose `as_of` is not after `when` (else the oldest one we have)."""
        best: tuple[Attestation, str] | None = None
        for att, eid in self.attestations:
            if att.as_of <= when and (best is None or att.as_of >= best[0].as_of):
                best = (att, eid)
        if best is None and self.attestations:
            best = min(self.attestations, key=lambda a: a[0].as_of)
        return best

    def feoc_at(self, when: datetime) -> bool:
        att = self.attestation_at(when)
        return bool(att and att[0].feoc)

    def pfe_at(self, when: datetime) -> bool:
        att = self.attestation_at(when)
        return bool(att and att[0].prohibited_foreign_entity)


def _key_record(facility_id: str, info: PublicKeyInfo) -> KeyRecord:
    pub = public_key_from_b64(info.public_key)
    if key_id(pub) != info.key_id:
        raise EventError(
            Reason.SCHEMA_INVALID, f"key_id {info.key_id} is not the fingerprint of the public key"
        )
    return KeyRecord(facility_id, info.key_id, pub, info.valid_from, info.valid_until)


class Registry:
    """In-memory registry state. `check` authorises an event; `apply` folds a registry event in."""

    def __init__(self) -> None:
        self.facilities: dict[str, FacilityRecord] = {}
        self.keys: dict[tuple[str, str], KeyRecord] = {}

    # -- queries -------------------------------------------------------------------------------
    def public_key(self, facility_id: str, kid: str) -> Ed25519PublicKey | None:
        rec = self.keys.get((facility_id, kid))
        return rec.public_key if rec else None

    def authorize(self, decoded: DecodedEvent, *, check_signature: bool = True) -> None:
        """Steps 1-5 of accepting an event's identity. Raises EventError with a stable reason."""
        ev = decoded.event
        # 1. the signer is a registered facility (the authority bootstraps itself: see `apply`)
        fac = self.facilities.get(ev.facility_id)
        if fac is None:
            if self._is_bootstrap(decoded):
                if check_signature:
                    verify_signature(decoded, _key_record(ev.facility_id, ev.key).public_key)  # type: ignore[union-attr]
                return
            raise EventError(Reason.UNKNOWN_FACILITY, f"facility {ev.facility_id!r} is not registered")
        # 2. the key is one of that facility's keys
        rec = self.keys.get((ev.facility_id, decoded.key_id))
        if rec is None:
            raise EventError(
                Reason.UNKNOWN_KEY, f"key {decoded.key_id} is not registered for {ev.facility_id}"
            )
        # 3. the key was valid and not revoked at the event's time
        if rec.revoked_by(ev.time):
            raise EventError(
                Reason.KEY_REVOKED,
                f"key {rec.key_id} of {ev.facility_id} was revoked at {rec.revoked_at:%Y-%m-%dT%H:%M:%SZ}",
            )
        if not rec.valid_at(ev.time):
            raise EventError(
                Reason.KEY_NOT_VALID,
                f"key {rec.key_id} of {ev.facility_id} is valid from {rec.valid_from:%Y-%m-%dT%H:%M:%SZ}"
                + (f" until {rec.valid_until:%Y-%m-%dT%H:%M:%SZ}" if rec.valid_until else "")
                + f", the event is dated {ev.time:%Y-%m-%dT%H:%M:%SZ}",
            )
        # 4. the signature verifies over the canonical bytes received
        if check_signature:
            verify_signature(decoded, rec.raw)
        # 5. the facility's roles allow this kind
        if decoded.kind not in fac.roles:
            raise EventError(
                Reason.ROLE_NOT_ALLOWED, f"{ev.facility_id} may not sign {decoded.kind.value} events"
            )

    def _is_bootstrap(self, decoded: DecodedEvent) -> bool:
        ev = decoded.event
        return (
            not self.facilities
            and isinstance(ev, FacilityRegistered)
            and ev.facility_id == REGISTRY_FACILITY_ID
            and ev.subject_facility_id == REGISTRY_FACILITY_ID
            and decoded.key_id == ev.key.key_id
        )

    # -- updates -------------------------------------------------------------------------------
    def check_registry_event(self, ev: Event) -> None:
        """Business rules of registry events (identity was checked by `authorize`)."""
        if isinstance(ev, FacilityRegistered):
            if ev.subject_facility_id in self.facilities:
                raise EventError(
                    Reason.FACILITY_EXISTS, f"facility {ev.subject_facility_id!r} is already registered"
                )
            _key_record(ev.subject_facility_id, ev.key)
        elif isinstance(ev, FacilityAttested | KeyRotated | KeyRevoked):
            if ev.subject_facility_id not in self.facilities:
                raise EventError(
                    Reason.UNKNOWN_FACILITY, f"facility {ev.subject_facility_id!r} is not registered"
                )
            if isinstance(ev, KeyRotated):
                if (ev.subject_facility_id, ev.key.key_id) in self.keys:
                    raise EventError(Reason.SCHEMA_INVALID, f"key {ev.key.key_id} is already registered")
                _key_record(ev.subject_facility_id, ev.key)
                if ev.retire_key_id and (ev.subject_facility_id, ev.retire_key_id) not in self.keys:
                    raise EventError(
                        Reason.UNKNOWN_KEY, f"key {ev.retire_key_id} to retire is not registered"
                    )
            if isinstance(ev, KeyRevoked) and (ev.subject_facility_id, ev.key_id) not in self.keys:
                raise EventError(
                    Reason.UNKNOWN_KEY, f"key {ev.key_id} of {ev.subject_facility_id} is not registered"
                )

    def apply(self, ev: Event, event_id: str) -> None:
        if ev.kind not in REGISTRY_KINDS:
            return
        if isinstance(ev, FacilityRegistered):
            roles = frozenset(ev.roles)
            if ev.subject_facility_id == REGISTRY_FACILITY_ID:
                roles = roles | frozenset(AUTHORITY_ROLES)
            self.facilities[ev.subject_facility_id] = FacilityRecord(
                ev.subject_facility_id, ev.legal_entity, ev.country, roles, [(ev.attestation, event_id)]
            )
            rec = _key_record(ev.subject_facility_id, ev.key)
            self.keys[(rec.facility_id, rec.key_id)] = rec
        elif isinstance(ev, FacilityAttested):
            self.facilities[ev.subject_facility_id].attestations.append((ev.attestation, event_id))
        elif isinstance(ev, KeyRotated):
            rec = _key_record(ev.subject_facility_id, ev.key)
            self.keys[(rec.facility_id, rec.key_id)] = rec
            if ev.retire_key_id:
                old = self.keys[(ev.subject_facility_id, ev.retire_key_id)]
                old.valid_until = ev.retire_at or ev.key.valid_from
        elif isinstance(ev, KeyRevoked):
            old = self.keys[(ev.subject_facility_id, ev.key_id)]
            old.revoked_at = ev.revoked_at if old.revoked_at is None else min(old.revoked_at, ev.revoked_at)

    @classmethod
    def from_events(cls, events: Iterable[tuple[Event, str]]) -> Registry:
        reg = cls()
        for ev, eid in events:
            reg.apply(ev, eid)
        return reg
