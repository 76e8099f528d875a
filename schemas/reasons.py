"""Stable reason codes for rejected events.

A code never changes meaning once published: monitoring, dashboards and auditors key on it. The human
detail that goes with it may change.
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    # wire / decoding (verify stage)
    MALFORMED = "malformed"  # not UTF-8 JSON, or not a JSON object
    OVERSIZED = "oversized"  # larger than MAX_EVENT_BYTES
    MISSING_SIGNATURE = "missing_signature"
    UNKNOWN_KIND = "unknown_kind"
    SCHEMA_INVALID = "schema_invalid"
    HEADER_MISMATCH = "header_mismatch"  # CloudEvents attributes disagree with the event
    MISSING_HEADERS = "missing_headers"  # no CloudEvents attributes at all
    # identity (verify stage, against the registry)
    UNKNOWN_FACILITY = "unknown_facility"
    UNKNOWN_KEY = "unknown_key"
    KEY_NOT_VALID = "key_not_valid_at_event_time"
    KEY_REVOKED = "key_revoked"
    BAD_SIGNATURE = "bad_signature"
    ROLE_NOT_ALLOWED = "role_not_allowed"
    # ledger rules (sequencer)
    DUPLICATE_CONFLICT = "duplicate_conflict"  # same event id, different bytes
    UNKNOWN_INPUT = "unknown_input"
    OVERDRAWN = "overdrawn"
    MASS_NOT_CONSERVED = "mass_not_conserved"
    BATCH_EXISTS = "batch_exists"
    CYCLE = "cycle"
    STAGE_ORDER = "stage_order"
    NOT_CUSTODIAN = "not_custodian"
    FACILITY_EXISTS = "facility_exists"
    CORRECTION_TARGET = "correction_target_missing"
    PARENTS_TIMEOUT = "parents_timeout"  # waited for parents that never arrived
    # internal hop (sequencer)
    UNAUTHENTICATED = "unauthenticated"  # a verified-topic record without a valid worker MAC: never appended
    INTERNAL_ERROR = "internal_error"  # a bug; the event is kept with the traceback summary


class EventError(Exception):
    """An event cannot be accepted. `reason` is stable; `detail` explains it to a person."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail

    def diagnostics(self) -> str:
        return f"rejected ({self.reason.value}): {self.detail}"
