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
    H_HOP_MAC,
    HOP_MAX_BYTES,
    MAX_MESSAGE_BYTES,
    HopKey,
    Sequencer,
    VerifiedRecord,
    pack_verified,
    parse_source,
    source_of,
    unpack_verified,
    verify_message,
)
from ledger.registry import Registry
from schemas.cloudevents import to_binary, to_structured
from schemas.reasons import Reason
from schemas.signing import decode, generate_key, sign_object
from tests.support.streams_helpers import family

SRC = "material-events/1/42"
KEY = HopKey.generate()
TOPIC = "verified"


def to_verified(incoming: Any) -> tuple[list[tuple[str, bytes]], bytes]:
    [record] = pack_verified([incoming], KEY, TOPIC)
    return record


def from_verified(headers: Any, value: bytes, fallback_source: str = "verified/0/0") -> Any:
    [one] = unpack_verified(headers, value, KEY, topic=TOPIC, position=fallback_source)
    return one


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
    back = from_verified(vh, vv, fallback_source="x")
    assert back.error is None and back.signature_checked and back.source == SRC
    assert back.decoded is not None and back.decoded.event_id == chain.chain_events[0].event_id

    bad = verify_message(
        [(k, b"0" * 64 if k == "ce_id" else x) for k, x in headers], value, ledger.registry, source=SRC
    )
    bh, bv = to_verified(bad)
    back = from_verified(bh, bv, fallback_source="x")
    assert back.error is not None and back.error.reason == Reason.HEADER_MISMATCH
    assert back.raw == value  # the original bytes
    assert back.decoded is not None  # event id recorded with the rejection


def test_a_batch_travels_in_order_in_one_authenticated_record(ledger: Ledger, chain: DemoChain) -> None:
    outcomes = []
    for i, ev in enumerate(chain.chain_events[:20]):
        h, v = binary(ev.raw)
        outcomes.append(verify_message(h, v, ledger.registry, source=f"material-events/0/{i}"))
    outcomes.append(verify_message([], b"{nope", ledger.registry, source="material-events/0/20"))
    [(headers, value)] = pack_verified(outcomes, KEY, TOPIC)
    back = unpack_verified(headers, value, KEY, topic=TOPIC, position="verified/0/0")
    assert [it.source for it in back] == [f"material-events/0/{i}" for i in range(21)]
    assert [it.decoded.event_id for it in back[:20]] == [e.event_id for e in chain.chain_events[:20]]  # type: ignore[union-attr]
    assert back[20].error is not None and back[20].raw == b"{nope"
    # carried, not decoded twice: equal to what a full decode of the signed bytes gives
    assert all(it.decoded == decode(it.raw) for it in back[:20])
    assert all(it.signature_checked for it in back[:20])


def test_large_batches_split_under_the_record_limit(ledger: Ledger, chain: DemoChain) -> None:
    outcomes = []
    for i, ev in enumerate(chain.chain_events[:40]):
        h, v = binary(ev.raw)
        outcomes.append(verify_message(h, v, ledger.registry, source=f"material-events/0/{i}"))
    recs = pack_verified(outcomes, KEY, TOPIC, limit=8 * 1024)
    assert len(recs) > 1 and all(len(v) <= 8 * 1024 for _, v in recs)
    back = [it for h, v in recs for it in unpack_verified(h, v, KEY, topic=TOPIC, position="v/0/0")]
    assert [it.source for it in back] == [o.source for o in outcomes]


def test_a_message_too_large_to_forward_is_oversized_with_its_first_bytes(ledger: Ledger) -> None:
    huge = b"{" + b"x" * (HOP_MAX_BYTES + 10) + b"}"
    it = verify_message([], huge, ledger.registry, source=SRC)
    [(h, v)] = pack_verified([it], KEY, TOPIC)
    assert len(v) <= HOP_MAX_BYTES
    [back] = unpack_verified(h, v, KEY, topic=TOPIC, position="v/0/0")
    assert back.error is not None and back.error.reason == Reason.OVERSIZED
    assert huge.startswith(back.raw) and len(back.raw) > MAX_MESSAGE_BYTES
    assert str(len(huge)) in back.error.detail


def test_forged_verified_records_are_unauthenticated_and_never_appended(
    ledger: Ledger, chain: DemoChain
) -> None:
    """What an attacker who can produce to the verified topic can write: nothing gets appended."""
    raw = chain.chain_events[0].raw
    good = verify_message(*binary(raw), ledger.registry, source="material-events/0/0")
    h, v = to_verified(good)
    other = HopKey.generate()
    [(oh, ov)] = pack_verified([good], other, TOPIC)  # another key
    tampered = v[:-2] + bytes([v[-2] ^ 1]) + v[-1:]  # one bit of the batch flipped
    replayed_elsewhere = pack_verified([good], KEY, "another-ledgers-verified")[0]
    legacy = ([("bl_sig_checked", b"1"), ("bl_source", b"material-events/0/0")], raw)  # the old format
    forged = [
        (oh, ov),
        (h, tampered),
        replayed_elsewhere,
        legacy,
        ([(k, x) for k, x in h if k != H_HOP_MAC], v),
    ]
    seq = Sequencer(ledger, "app", KEY)
    out = seq.process(records(forged))
    assert [r.reason for _, r in out.results] == ["unauthenticated"] * len(forged)
    assert [it.source for it, _ in out.results] == [f"verified/0/{i}" for i in range(len(forged))]
    assert out.rejected() and len(out.rejected()) == len(forged)  # the sequencer routes these itself
    assert ledger.decisions([good.decoded.event_id]) == {}  # type: ignore[union-attr]
    with ledger.engine.connect() as conn:
        from ledger.store import REJECTIONS

        kept = [bytes(r.raw) for r in conn.execute(REJECTIONS.select().order_by(REJECTIONS.c.id))]
    assert kept == [ov, tampered, replayed_elsewhere[1], raw, v]  # the bytes of each, kept
    # the genuine record still goes through afterwards
    out = seq.process(records([(h, v)], start=len(forged)))
    assert [r.status for _, r in out.results] == ["appended"]


# -------------------------------------------------------------------------------- sequencer


def records(items: list[tuple[list[tuple[str, bytes]], bytes]], start: int = 0) -> list[VerifiedRecord]:
    return [VerifiedRecord("verified", 0, start + i, h, v) for i, (h, v) in enumerate(items)]


def Seq(ledger: Ledger, consumer: str = "app") -> Sequencer:
    return Sequencer(ledger, consumer, KEY)


def verified(ledger: Ledger, raw: bytes, source: str) -> tuple[list[tuple[str, bytes]], bytes]:
    h, v = binary(raw)
    return to_verified(verify_message(h, v, ledger.registry, source=source))


def test_sequencer_appends_once_and_tracks_offsets(ledger: Ledger, chain: DemoChain) -> None:
    seq = Seq(ledger)
    evs = chain.chain_events[:5]
    recs = records([verified(ledger, e.raw, f"material-events/0/{i}") for i, e in enumerate(evs)])
    out = seq.process(recs)
    assert [r.status for _, r in out.results] == ["appended"] * 5
    assert ledger.stored_offsets("app") == {("verified", 0): 5}
    assert ledger.stored_offsets("app/sources") == {("material-events", 0): 5}
    # a restart re-reads the same offsets: skipped without touching the ledger
    again = Seq(ledger).process(recs)
    assert again.skipped_offsets == 5 and not again.results


def test_redelivered_rejection_is_recorded_once(ledger: Ledger, chain: DemoChain) -> None:
    seq = Seq(ledger)
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
    seq = Seq(ledger)
    raw = chain.chain_events[0].raw
    out = seq.process(
        records([verified(ledger, raw, "material-events/0/0"), verified(ledger, raw, "material-events/0/1")])
    )
    assert [r.status for _, r in out.results] == ["appended", "duplicate"]


def test_children_before_parents_are_released_and_reported(ledger: Ledger, chain: DemoChain) -> None:
    seq = Seq(ledger)
    parent, child = family(chain, "1")
    out = seq.process(records([verified(ledger, child, "material-events/0/0")]))
    assert [r.status for _, r in out.results] == ["parked"]
    out = seq.process(records([verified(ledger, parent, "material-events/0/1")], start=1))
    assert [r.status for _, r in out.results] == ["appended", "appended"]
    assert out.results[1][0].source == "material-events/0/0"  # released from the store, under its own source


def test_expired_parked_events_come_back_with_their_bytes(ledger: Ledger, chain: DemoChain) -> None:
    seq = Seq(ledger)
    _, orphan = family(chain, "2")
    seq.process(records([verified(ledger, orphan, "material-events/1/3")]))
    expired = seq.expire(timedelta(seconds=0))
    assert len(expired) == 1
    raw, source, res = expired[0]
    assert res.reason == Reason.PARENTS_TIMEOUT.value and source == "material-events/1/3" and raw == orphan


def test_an_event_that_breaks_the_append_costs_itself_only(
    ledger: Ledger, chain: DemoChain, monkeypatch: pytest.MonkeyPatch
) -> None:
    seq = Seq(ledger)
    good = [
        verify_message(*binary(e.raw), ledger.registry, source=f"material-events/0/{i}")
        for i, e in enumerate(chain.chain_events[:3])
    ]
    [rec] = records([pack_verified(good, KEY, TOPIC)[0]])
    boom = good[1].decoded.event_id  # type: ignore[union-attr]
    real = ledger.append

    def append(items: Any, **kw: Any) -> Any:
        if any(getattr(getattr(it, "decoded", None), "event_id", None) == boom for it in items):
            raise RuntimeError("disk on fire")
        return real(items, **kw)

    monkeypatch.setattr(ledger, "append", append)
    out = seq.process_isolated(rec)
    assert [r.status for _, r in out.results] == ["appended", "rejected", "appended"]
    assert out.results[1][1].reason == Reason.INTERNAL_ERROR.value
    assert ledger.stored_offsets("app") == {("verified", 0): 1}
    assert ledger.decisions(sources=["material-events/0/1"])["material-events/0/1"][2] == "internal_error"


def test_sequencer_checks_signatures_the_verify_stage_could_not(ledger: Ledger, chain: DemoChain) -> None:
    """A forged event passed on unchecked (stale registry) is still caught by the writer."""
    _, raw, _ = chain.bad_events[0]
    h, v = binary(raw)
    it = verify_message(h, v, Registry(), source="material-events/0/0")
    assert it.error is None and not it.signature_checked
    unchecked = to_verified(it)
    out = Seq(ledger).process(records([unchecked]))
    assert out.results[0][1].reason == Reason.BAD_SIGNATURE.value


def test_key_of_another_facility_is_refused(ledger: Ledger, chain: DemoChain) -> None:
    stranger = generate_key()
    obj = {k: v for k, v in json.loads(chain.chain_events[0].raw).items() if k != "sig"}
    raw, _ = sign_object(obj, stranger)
    h, v = binary(raw)
    it = verify_message(h, v, ledger.registry, source=SRC)
    assert it.error is None and not it.signature_checked  # unknown key: the sequencer decides
    out = Seq(ledger).process(records([to_verified(it)]))
    assert out.results[0][1].reason == Reason.UNKNOWN_KEY.value


# -------------------------------------------------------------------------------- invalid inputs (issue 10)


def _resigned(chain: DemoChain, change: Any) -> bytes:
    """A chain event changed by `change(obj)` and signed again by its facility: only the change is wrong."""
    ev = chain.chain_events[0]
    obj = {k: v for k, v in json.loads(ev.raw).items() if k != "sig"}
    change(obj)
    fac = next(f for f in chain.facilities.values() if f.facility_id == obj["facility_id"])
    raw, _ = sign_object(obj, fac.key)
    return raw


def _set_time(value: Any) -> Any:
    return lambda obj: obj.__setitem__("time", value)


def _set_kg(value: Any) -> Any:
    return lambda obj: obj["outputs"][0].__setitem__("kg", value)


@pytest.mark.parametrize(
    ("label", "change", "reason"),
    [
        ("time before year 1 in UTC", _set_time("0001-01-01T00:00:00+01:00"), "schema_invalid"),
        ("time after year 9999 in UTC", _set_time("9999-12-31T23:59:59-01:00"), "schema_invalid"),
        ("far-future time", _set_time("2100-01-01T00:00:00Z"), "schema_invalid"),
        ("epoch number time", _set_time(1700000000), "schema_invalid"),
        ("epoch string time", _set_time("1700000000"), "schema_invalid"),
        ("date without time", _set_time("2025-03-01"), "schema_invalid"),
        ("minus zero quantity", _set_kg("-0"), "schema_invalid"),
        ("minus zero decimal", _set_kg("-0.0"), "schema_invalid"),
    ],
)
def test_invalid_signed_events_are_refused_with_a_stable_reason(
    ledger: Ledger, chain: DemoChain, label: str, change: Any, reason: str
) -> None:
    raw = _resigned(chain, change)
    headers, _ = binary(chain.chain_events[0].raw)
    it = verify_message(headers, raw, ledger.registry, source=SRC)
    assert it.error is not None and it.error.reason.value == reason, (label, it.error)
    assert it.raw == raw and it.source == SRC  # under the raw topic's position, bytes kept


def _bytes_variants(raw: bytes) -> list[tuple[str, bytes, str]]:
    text = raw.decode()
    sig_at = text.index('"value":"') + len('"value":"')
    return [
        ("UTF-16", text.encode("utf-16"), "malformed"),
        ("UTF-16-LE without BOM", text.encode("utf-16-le"), "malformed"),
        ("UTF-32", text.encode("utf-32"), "malformed"),
        ("UTF-8 BOM", b"\xef\xbb\xbf" + raw, "malformed"),
        ("duplicate key", raw[:-1] + b',"kind":"batch.extracted"}', "malformed"),
        ("NaN", raw[:-1] + b',"x":NaN}', "malformed"),
        ("1e400", raw[:-1] + b',"x":1e400}', "schema_invalid"),
        ("non-ASCII sig.value", (text[:sig_at] + "é" + text[sig_at + 1 :]).encode(), "schema_invalid"),
        ("deeply nested", b'{"a":' * 5000 + b"1" + b"}" * 5000, "malformed"),
    ]


def test_invalid_bytes_are_malformed_never_internal_errors(ledger: Ledger, chain: DemoChain) -> None:
    raw = chain.chain_events[0].raw
    headers, _ = binary(raw)
    for label, value, reason in _bytes_variants(raw):
        it = verify_message(headers, value, ledger.registry, source=SRC)
        assert it.error is not None, label
        got = it.error.reason.value
        assert got == reason or (reason == "malformed" and got == "oversized"), (label, it.error)
        assert it.raw == value


def test_structured_mode_nested_a_thousand_deep_is_malformed(ledger: Ledger, chain: DemoChain) -> None:
    msg = to_structured(decode(chain.chain_events[0].raw))
    deep = b'{"n":' * 1000 + b'"x"' + b"}" * 1000
    for value in (msg.value[:-1] + b',"ext":' + deep + b"}", b'{"data":' * 1000 + b"{}" + b"}" * 1000):
        it = verify_message(msg.headers, value, ledger.registry, source=SRC)
        assert it.error is not None and it.error.reason == Reason.MALFORMED, it.error
    dup = msg.value[:-1] + b',"id":"' + b"0" * 64 + b'"}'
    it = verify_message(msg.headers, dup, ledger.registry, source=SRC)
    assert it.error is not None and it.error.reason == Reason.MALFORMED and "duplicate" in it.error.detail


def test_offline_append_decides_each_line(ledger: Ledger, chain: DemoChain) -> None:
    from ledger.core import Incoming

    good = [e.raw for e in chain.chain_events[:3]]
    bad = _resigned(chain, _set_time("0001-01-01T00:00:00+01:00"))
    text = bad.decode()
    sig_at = text.index('"value":"') + len('"value":"')
    bad2 = (text[:sig_at] + "é" + text[sig_at + 1 :]).encode()
    lines = [good[0], bad, good[1], bad2, good[2]]
    res = ledger.append([Incoming(raw=x, source=f"f.jsonl:{n}") for n, x in enumerate(lines, 1)], park=True)
    assert [r.status for r in res] == ["appended", "rejected", "appended", "rejected", "appended"]
    assert [r.reason for r in res if r.status == "rejected"] == ["schema_invalid", "schema_invalid"]


def test_a_facility_registered_by_another_process_becomes_known_to_the_sequencer(
    ledger: Ledger, chain: DemoChain
) -> None:
    """`batteryledger facility register` while a worker runs: the sequencer reloads its registry."""
    from batteryledger.sample import ChainBuilder, Facility, out
    from schemas.events import Kind

    seq = Seq(ledger)
    b = ChainBuilder(chain.operator_key)
    late = Facility("late-mine", "Late Mine", "AU", [Kind.BATCH_EXTRACTED])
    reg = b.register(late)
    ev = b.transform("late-mine", Kind.BATCH_EXTRACTED, [out("LATE-1", "ore", "10", li="1")])
    # the sequencer has seen the store before the registration (its registry lacks the facility)
    seq.process(records([verified(ledger, chain.chain_events[0].raw, "material-events/0/0")]))
    with Ledger(ledger.url, operator_key=chain.operator_key) as cli:  # another process: the CLI
        assert cli.append([reg.raw])[0].status == "appended"
    assert "late-mine" not in ledger.registry.facilities
    out_ = seq.process(records([verified(ledger, ev.raw, "material-events/0/1")], start=1))
    assert [r.status for _, r in out_.results] == ["appended"], out_.results
    assert ledger.decisions([ev.event_id])[ev.event_id][0] == "appended"


def test_an_event_waiting_for_a_facility_registered_elsewhere_is_released(
    ledger: Ledger, chain: DemoChain
) -> None:
    from batteryledger.sample import ChainBuilder, Facility, out
    from schemas.events import Kind

    seq = Seq(ledger)
    b = ChainBuilder(chain.operator_key)
    late = Facility("late-ref", "Late Refinery", "US", [Kind.BATCH_EXTRACTED])
    b.facilities[late.facility_id] = late
    ev = b.transform("late-ref", Kind.BATCH_EXTRACTED, [out("LATE-2", "ore", "10", li="1")])
    first = seq.process(records([verified(ledger, ev.raw, "material-events/0/0")]))
    assert [r.status for _, r in first.results] == ["parked"]
    with Ledger(ledger.url, operator_key=chain.operator_key) as cli:
        assert cli.append([b.register(late).raw])[0].status == "appended"
    nxt = seq.process(records([verified(ledger, chain.chain_events[0].raw, "material-events/0/1")], start=1))
    # released by whichever writer saw the registration first (here the CLI's, which found it waiting)
    assert ledger.decisions([ev.event_id])[ev.event_id][0] == "appended", nxt.results
    assert ledger.parked_count() == 0
