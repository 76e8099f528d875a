"""ledger.intake: the verify stage and the sequencer's logic, without Kafka (real keys, real SQLite store)."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from batteryledger.sample import DemoChain, demo_chain
from ledger.core import Ledger
from ledger.intake import (
    H_REASON,
    H_SIG_CHECKED,
    H_SOURCE,
    MAX_MESSAGE_BYTES,
    Sequencer,
    VerifiedRecord,
    from_verified,
    parse_source,
    source_of,
    to_verified,
    verify_message,
)
from ledger.registry import Registry
from schemas.cloudevents import to_binary, to_structured
from schemas.reasons import Reason
from schemas.signing import decode, generate_key, sign_object
from tests.support.streams_helpers import family

SRC = "material-events/1/42"


@pytest.fixture(scope="module")
def chain() -> DemoChain:
    return demo_chain()


@pytest.fixture
def ledger(tmp_path: Path, chain: DemoChain) -> Ledger:
    led = Ledger.init(f"sqlite:///{tmp_path}/l.db", operator_key=chain.operator_key, origin="test/intake")
    led.append([e.raw for e in chain.registry_events])
    return led


def binary(raw: bytes) -> tuple[list[tuple[str, bytes]], bytes]:
    msg = to_binary(decode(raw))
    return msg.headers, msg.value


# -------------------------------------------------------------------------------- verify stage


def test_good_event_is_checked_when_the_registry_knows_the_key(ledger: Ledger, chain: DemoChain) -> None:
    ev = chain.chain_events[0]
    headers, value = binary(ev.raw)
    it = verify_message(headers, value, ledger.registry, source=SRC)
    assert it.error is None and it.decoded is not None
    assert it.decoded.event_id == ev.event_id
    assert it.signature_checked and it.source == SRC


def test_unknown_facility_passes_on_unchecked_for_the_sequencer(chain: DemoChain) -> None:
    headers, value = binary(chain.chain_events[0].raw)
    it = verify_message(headers, value, Registry(), source=SRC)  # a stale (empty) registry
    assert it.error is None and not it.signature_checked


def test_structured_mode_is_accepted(ledger: Ledger, chain: DemoChain) -> None:
    msg = to_structured(decode(chain.chain_events[1].raw))
    it = verify_message(msg.headers, msg.value, ledger.registry, source=SRC)
    assert it.error is None and it.signature_checked
    assert it.raw == msg.value  # a rejection would keep the envelope as received


@pytest.mark.parametrize(
    ("label", "make", "reason"),
    [
        ("oversized", lambda h, v: (h, b" " * (MAX_MESSAGE_BYTES + 1)), Reason.OVERSIZED),
        ("malformed", lambda h, v: (h, b'{"spec": "batteryledger/1", "ki'), Reason.MALFORMED),
        ("empty value", lambda h, v: (h, None), Reason.MALFORMED),
        ("no headers", lambda h, v: ([], v), Reason.MISSING_HEADERS),
        ("headers None", lambda h, v: (None, v), Reason.MISSING_HEADERS),
        (
            "wrong ce_id",
            lambda h, v: ([(k, b"0" * 64 if k == "ce_id" else x) for k, x in h], v),
            Reason.HEADER_MISMATCH,
        ),
        (
            "wrong ce_type",
            lambda h, v: ([(k, b"org.batteryledger.x" if k == "ce_type" else x) for k, x in h], v),
            Reason.HEADER_MISMATCH,
        ),
        (
            "missing ce_source",
            lambda h, v: ([(k, x) for k, x in h if k != "ce_source"], v),
            Reason.MISSING_HEADERS,
        ),
        ("header not utf-8", lambda h, v: ([*h, ("ce_extra", b"\xff\xfe")], v), Reason.HEADER_MISMATCH),
    ],
)
def test_bad_messages_become_rejections_with_the_original_bytes(
    ledger: Ledger, chain: DemoChain, label: str, make: Any, reason: Reason
) -> None:
    headers, value = make(*binary(chain.chain_events[0].raw))
    it = verify_message(headers, value, ledger.registry, source=SRC)
    assert it.error is not None, label
    assert it.error.reason == reason, (label, it.error)
    assert it.raw == (value or b"")
    assert it.source == SRC


def test_unknown_kind_is_rejected(ledger: Ledger, chain: DemoChain) -> None:
    fac = chain.facilities["mine-au-greenbushes"]
    raw, _ = sign_object(
        {"spec": "batteryledger/1", "kind": "battery.teleported", "facility_id": fac.facility_id}, fac.key
    )
    headers, _ = binary(chain.chain_events[0].raw)
    it = verify_message(headers, raw, ledger.registry, source=SRC)
    assert it.error is not None and it.error.reason == Reason.UNKNOWN_KIND


def test_forged_signature_is_rejected_at_the_verify_stage(ledger: Ledger, chain: DemoChain) -> None:
    label, raw, expected = chain.bad_events[0]
    assert expected == "bad_signature", label
    headers, value = binary(raw)
    it = verify_message(headers, value, ledger.registry, source=SRC)
    assert it.error is not None and it.error.reason == Reason.BAD_SIGNATURE
    assert it.decoded is not None  # the event id is known and recorded with the rejection


def test_an_unexpected_exception_costs_one_event_not_the_agent(chain: DemoChain) -> None:
    class Broken(Registry):
        def public_key(self, facility_id: str, kid: str) -> Any:
            raise RuntimeError("boom")

    headers, value = binary(chain.chain_events[0].raw)
    it = verify_message(headers, value, Broken(), source=SRC)
    assert it.error is not None and it.error.reason == Reason.INTERNAL_ERROR
    assert "boom" in it.error.detail


# -------------------------------------------------------------------------------- wire between stages


def test_source_round_trip() -> None:
    pos = parse_source(source_of("material-events-x-1", 3, 99))
    assert pos is not None and (pos.topic, pos.partition, pos.offset) == ("material-events-x-1", 3, 99)
    assert parse_source("api") is None
    assert parse_source("t/x/1") is None


def test_verified_record_round_trip(ledger: Ledger, chain: DemoChain) -> None:
    headers, value = binary(chain.chain_events[0].raw)
    good = verify_message(headers, value, ledger.registry, source=SRC)
    vh, vv = to_verified(good)
    assert dict(vh)[H_SIG_CHECKED] == b"1" and dict(vh)[H_SOURCE] == SRC.encode()
    back = from_verified(vh, vv, fallback_source="x")
    assert back.error is None and back.signature_checked and back.source == SRC
    assert back.decoded is not None and back.decoded.event_id == chain.chain_events[0].event_id

    bad = verify_message(
        [(k, b"0" * 64 if k == "ce_id" else x) for k, x in headers], value, ledger.registry, source=SRC
    )
    bh, bv = to_verified(bad)
    assert dict(bh)[H_REASON] == b"header_mismatch" and bv == value
    back = from_verified(bh, bv, fallback_source="x")
    assert back.error is not None and back.error.reason == Reason.HEADER_MISMATCH
    assert back.decoded is not None  # event id recorded with the rejection
    odd = from_verified([(H_REASON, b"no-such-code")], b"x", fallback_source="f")
    assert odd.error is not None and odd.error.reason == Reason.INTERNAL_ERROR


# -------------------------------------------------------------------------------- sequencer


def records(items: list[tuple[list[tuple[str, bytes]], bytes]], start: int = 0) -> list[VerifiedRecord]:
    return [VerifiedRecord("verified", 0, start + i, h, v) for i, (h, v) in enumerate(items)]


def verified(ledger: Ledger, raw: bytes, source: str) -> tuple[list[tuple[str, bytes]], bytes]:
    h, v = binary(raw)
    return to_verified(verify_message(h, v, ledger.registry, source=source))


def test_sequencer_appends_once_and_tracks_offsets(ledger: Ledger, chain: DemoChain) -> None:
    seq = Sequencer(ledger, consumer="app")
    evs = chain.chain_events[:5]
    recs = records([verified(ledger, e.raw, f"material-events/0/{i}") for i, e in enumerate(evs)])
    out = seq.process(recs)
    assert [r.status for _, r in out.results] == ["appended"] * 5
    assert ledger.stored_offsets("app") == {("verified", 0): 5}
    assert ledger.stored_offsets("app/sources") == {("material-events", 0): 5}
    # a restart re-reads the same offsets: skipped without touching the ledger
    again = Sequencer(ledger, consumer="app").process(recs)
    assert again.skipped_offsets == 5 and not again.results


def test_redelivered_rejection_is_recorded_once(ledger: Ledger, chain: DemoChain) -> None:
    seq = Sequencer(ledger, consumer="app")
    h, _ = binary(chain.chain_events[0].raw)
    bad = to_verified(verify_message(h, b"{not json", ledger.registry, source="material-events/1/7"))
    seq.process(records([bad]))
    # the verify stage crashed before committing: the same source arrives again at a later offset
    out = seq.process(records([bad], start=1))
    assert out.redeliveries == 1 and not out.results
    assert ledger.stats()["rejections"] == {"malformed": 1}
    # and twice within one batch
    bad2 = to_verified(verify_message(h, b"[]", ledger.registry, source="material-events/1/8"))
    out = seq.process(records([bad2, bad2], start=2))
    assert out.redeliveries == 1 and ledger.stats()["rejections"] == {"malformed": 2}


def test_a_republished_event_is_a_duplicate_not_a_second_entry(ledger: Ledger, chain: DemoChain) -> None:
    seq = Sequencer(ledger, consumer="app")
    raw = chain.chain_events[0].raw
    out = seq.process(
        records([verified(ledger, raw, "material-events/0/0"), verified(ledger, raw, "material-events/0/1")])
    )
    assert [r.status for _, r in out.results] == ["appended", "duplicate"]


def test_children_before_parents_are_released_and_reported(ledger: Ledger, chain: DemoChain) -> None:
    seq = Sequencer(ledger, consumer="app")
    parent, child = family(chain, "1")
    out = seq.process(records([verified(ledger, child, "material-events/0/0")]))
    assert [r.status for _, r in out.results] == ["parked"]
    out = seq.process(records([verified(ledger, parent, "material-events/0/1")], start=1))
    assert [r.status for _, r in out.results] == ["appended", "appended"]
    assert out.results[1][0].source == "material-events/0/0"  # released from the store, under its own source


def test_expired_parked_events_come_back_with_their_bytes(ledger: Ledger, chain: DemoChain) -> None:
    seq = Sequencer(ledger, consumer="app")
    _, orphan = family(chain, "2")
    seq.process(records([verified(ledger, orphan, "material-events/1/3")]))
    expired = seq.expire(timedelta(seconds=0))
    assert len(expired) == 1
    raw, source, res = expired[0]
    assert res.reason == Reason.PARENTS_TIMEOUT.value and source == "material-events/1/3" and raw == orphan


def test_record_failure_stores_an_internal_error_and_moves_on(ledger: Ledger, chain: DemoChain) -> None:
    seq = Sequencer(ledger, consumer="app")
    rec = records([verified(ledger, chain.chain_events[0].raw, "material-events/0/0")])[0]
    out = seq.record_failure(rec, RuntimeError("disk on fire"))
    assert out.results[0][1].reason == Reason.INTERNAL_ERROR.value
    assert ledger.stored_offsets("app") == {("verified", 0): 1}
    assert ledger.decisions(sources=["material-events/0/0"])["material-events/0/0"][2] == "internal_error"


def test_sequencer_checks_signatures_the_verify_stage_could_not(ledger: Ledger, chain: DemoChain) -> None:
    """A forged event passed on unchecked (stale registry) is still caught by the writer."""
    _, raw, _ = chain.bad_events[0]
    h, v = binary(raw)
    unchecked = to_verified(verify_message(h, v, Registry(), source="material-events/0/0"))
    assert dict(unchecked[0])[H_SIG_CHECKED] == b"0"
    out = Sequencer(ledger, consumer="app").process(records([unchecked]))
    assert out.results[0][1].reason == Reason.BAD_SIGNATURE.value


def test_key_of_another_facility_is_refused(ledger: Ledger, chain: DemoChain) -> None:
    stranger = generate_key()
    obj = {k: v for k, v in json.loads(chain.chain_events[0].raw).items() if k != "sig"}
    raw, _ = sign_object(obj, stranger)
    h, v = binary(raw)
    it = verify_message(h, v, ledger.registry, source=SRC)
    assert it.error is None and not it.signature_checked  # unknown key: the sequencer decides
    out = Sequencer(ledger, consumer="app").process(records([to_verified(it)]))
    assert out.results[0][1].reason == Reason.UNKNOWN_KEY.value
