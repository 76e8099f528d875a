"""schemas.trusted: the sequencer's rebuild of verified events equals full validation, field by field."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from batteryledger.sample import DemoChain
from schemas import trusted
from schemas.canonical import canonicalize as canonical_bytes
from schemas.events import EVENT_ADAPTER, MODEL_OF_KIND, Kind
from schemas.signing import decode
from schemas.trusted import _compile, event_from_verified_json


def same(a: Any, b: Any, path: str = "event") -> None:
    """Equal values of equal types, equal fields set, equal field order, all the way down."""
    assert type(a) is type(b), (path, type(a), type(b))
    if isinstance(a, BaseModel):
        assert a.model_fields_set == b.model_fields_set, path
        assert list(a.__dict__) == list(b.__dict__), path
        assert a.__pydantic_extra__ == b.__pydantic_extra__, path
        assert a.__pydantic_private__ == b.__pydantic_private__, path
        for k in a.__dict__:
            same(a.__dict__[k], b.__dict__[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            same(x, y, f"{path}[{i}]")
    else:
        assert a == b and repr(a) == repr(b), (path, a, b)
        if isinstance(a, datetime):
            assert a.utcoffset() == b.utcoffset() and a.tzinfo == b.tzinfo, path


def test_every_demo_event_rebuilds_as_validation_builds_it(bl_demo: DemoChain) -> None:
    kinds = set()
    for se in bl_demo.good_events:
        d = decode(se.raw)
        rebuilt = event_from_verified_json(d.unsigned)
        same(rebuilt, EVENT_ADAPTER.validate_json(d.unsigned))
        same(rebuilt, d.event)
        assert rebuilt == d.event
        kinds.add(d.kind)
    # the demo covers the kinds the append path sees most; the rest are covered below
    assert {Kind.BATCH_EXTRACTED, Kind.BATCH_PROCESSED, Kind.BATCH_SHIPPED, Kind.FACILITY_REGISTERED} <= kinds


@pytest.mark.parametrize("kind", list(Kind))
def test_every_event_model_has_a_builder(kind: Kind) -> None:
    """The rebuild must not quietly fall back to validation for a whole kind (a field default that is
    a factory did that once: every event was validated twice, and the equality tests still passed)."""
    cls = MODEL_OF_KIND[kind]
    assert _compile(cls) is not None


def test_demo_events_are_rebuilt_without_validation(
    bl_demo: DemoChain, monkeypatch: pytest.MonkeyPatch
) -> None:
    class NoValidation:
        def validate_json(self, data: bytes) -> Any:
            raise AssertionError("fell back to validation")

    monkeypatch.setattr(trusted, "EVENT_ADAPTER", NoValidation())
    for se in bl_demo.good_events:
        d = decode(se.raw)
        assert event_from_verified_json(d.unsigned) == d.event


def _event(**fields: Any) -> dict[str, Any]:
    return {"spec": "batteryledger/1", "facility_id": "f-1", "time": "2025-03-01T12:00:00Z", **fields}


KEY = {"key_id": "0123456789abcdef", "public_key": "A" * 43 + "=", "valid_from": "2024-01-01T00:00:00Z"}
OUT = {"batch_id": "B-1", "material": "ore", "kg": "10", "contained_kg": {"li": "1.5", "co": 2}}

CASES: list[dict[str, Any]] = [
    _event(kind="batch.extracted", outputs=[OUT], site="pit 3", nonce="n1", note="x"),
    _event(kind="batch.processed", process="conversion", inputs=[{"batch_id": "A", "kg": 7}], outputs=[OUT]),
    _event(kind="material.produced", inputs=[{"batch_id": "A", "kg": "1.000001"}], outputs=[OUT, {**OUT, "batch_id": "B-2"}]),
    _event(kind="cells.produced", inputs=[{"batch_id": "A", "kg": "1"}], outputs=[{**OUT, "units": 12, "kwh": "3.5", "purity_pct": "99.5"}]),
    _event(kind="modules.assembled", inputs=[{"batch_id": "A", "kg": "1"}], outputs=[OUT]),
    _event(kind="packs.assembled", inputs=[{"batch_id": "A", "kg": "1"}], outputs=[{**OUT, "value_usd": "12000.50", "volume_l": "1"}]),
    _event(kind="batch.recycled", external_feed=[{"description": "scrap", "consumer": "pre", "kg": "5", "origin_country": "MX"}], outputs=[OUT]),
    _event(kind="batch.recycled", feed_consumer="pre", inputs=[{"batch_id": "A", "kg": "1"}], outputs=[OUT]),
    _event(kind="batch.shipped", batch_id="A", kg="1", to_facility_id="g", from_country="US", value_usd="3"),
    _event(kind="batch.received", batch_id="A", kg="1", from_facility_id="g"),
    _event(kind="supplier.certified", batch_ids=["A", "B"], statement="pfe_cost_share", pfe_cost_share="0.1"),
    _event(kind="correction", corrects="a" * 64, reason="other", explanation="typo"),
    _event(facility_id="registry", kind="facility.registered", subject_facility_id="f-1", legal_entity="F",
           country="US", roles=["batch.extracted", "batch.shipped"],
           attestation={"feoc": False, "prohibited_foreign_entity": True, "as_of": "2024-01-01T00:00:00Z"}, key=KEY),
    _event(facility_id="registry", kind="facility.attested", subject_facility_id="f-1",
           attestation={"feoc": True, "as_of": "2025-01-01T00:00:00.5+02:00", "evidence": "doc"}),
    _event(facility_id="registry", kind="key.rotated", subject_facility_id="f-1", key={**KEY, "valid_until": "2030-01-01T00:00:00Z"},
           retire_key_id="fedcba9876543210", retire_at="2026-01-01T00:00:00Z"),
    _event(facility_id="registry", kind="key.revoked", subject_facility_id="f-1", key_id="0123456789abcdef",
           revoked_at="2025-06-01T00:00:00-05:00", reason="compromised"),
    # times the rebuild leaves to validation (more than microseconds): the same result either way
    _event(kind="batch.received", batch_id="A", kg="1", from_facility_id="g", time="2025-03-01T12:00:00.123456789Z"),
]  # fmt: skip


@pytest.mark.parametrize("obj", CASES, ids=[f"{i}-{c['kind']}" for i, c in enumerate(CASES)])
def test_every_kind_and_field_shape_rebuilds_as_validation_builds_it(obj: dict[str, Any]) -> None:
    unsigned = canonical_bytes(obj)
    expected = EVENT_ADAPTER.validate_json(unsigned)
    rebuilt = event_from_verified_json(unsigned)
    same(rebuilt, expected)
    assert rebuilt.model_dump() == expected.model_dump()


def test_the_rebuild_covers_every_kind() -> None:
    assert {Kind(c["kind"]) for c in CASES} == set(Kind)


def test_defaults_are_not_shared_mutable_state() -> None:
    a = event_from_verified_json(canonical_bytes(_event(kind="batch.extracted", outputs=[OUT])))
    b = event_from_verified_json(canonical_bytes(_event(kind="batch.extracted", outputs=[OUT])))
    assert a.inputs == [] and a.inputs is not b.inputs  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "obj",
    [
        _event(kind="batch.extracted", outputs=[OUT], surprise=1),  # unknown field
        _event(kind="batch.extracted"),  # a required field absent
        _event(kind="batch.extracted", outputs=[{**OUT, "kg": 1.5}]),  # a JSON float quantity
        _event(kind="batch.extracted", outputs=[OUT], time="2025-03-01"),  # not a time with a zone
        _event(kind="no.such.kind", outputs=[OUT]),
    ],
)
def test_what_is_not_valid_falls_back_to_validation_and_is_refused(obj: dict[str, Any]) -> None:
    unsigned = json.dumps(obj).encode()
    with pytest.raises(ValidationError):
        EVENT_ADAPTER.validate_json(unsigned)
    with pytest.raises(ValidationError):
        event_from_verified_json(unsigned)


def test_quantities_and_times_have_the_validated_types() -> None:
    ev = event_from_verified_json(
        canonical_bytes(_event(kind="batch.received", batch_id="A", kg=3, from_facility_id="g"))
    )
    assert ev.kg == Decimal(3) and type(ev.kg) is Decimal  # type: ignore[union-attr]
    assert ev.time == datetime(2025, 3, 1, 12, tzinfo=UTC) and ev.time.tzinfo is UTC
    assert ev.kind is Kind.BATCH_RECEIVED
