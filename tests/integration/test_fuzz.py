"""Fuzz through the REAL broker and worker (issue 10): every input appended or rejected with a reason.

About 10,000 hostile inputs (byte flips, truncations, deep nesting, duplicate keys, NaN/Infinity, 1e400,
huge and non-UTF-8 headers, bad UTF-8, UTF-16/BOM, random JSON values, re-signed events with wrong
field values) are published mixed with valid events, then every message is looked up in the ledger by
its broker position (rejections) or its event id (entries). Deterministic: a fixed seed. The counts are
printed (pytest -s shows them). Decoder-level coverage-guided fuzzing is tests/unit/test_fuzz_decoders.py.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from typing import Any

from kafka import KafkaProducer

from ledger.core import verify_ledger
from schemas.cloudevents import to_binary
from schemas.signing import decode, sign_object
from streams.topics import MATERIAL_EVENTS
from tests.integration.test_end_to_end import Rig, extraction, rig  # noqa: F401

SEED = 20261202
N_FUZZ = 10_000
N_VALID = 400


def _mutations(
    rng: random.Random, valid: list[bytes], keys: list[Any]
) -> list[tuple[str, bytes | None, list[tuple[str, bytes]] | None]]:
    """(label, value, headers or None for the template's) of N_FUZZ hostile messages."""
    out: list[tuple[str, bytes | None, list[tuple[str, bytes]] | None]] = []

    def flip(b: bytes) -> bytes:
        ba = bytearray(b)
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(ba))
            ba[i] ^= 1 << rng.randrange(8)
        return bytes(ba)

    def random_json(depth: int = 0) -> Any:
        r = rng.random()
        if depth > 4 or r < 0.3:
            return rng.choice(
                [None, True, False, 0, -1, 1.5, 10**30, "", "x" * rng.randint(0, 50), "\u00e9\ud7ff"]
            )
        if r < 0.65:
            return [random_json(depth + 1) for _ in range(rng.randint(0, 4))]
        return {
            rng.choice(["kind", "spec", "sig", "time", "outputs", "a", "b"]): random_json(depth + 1)
            for _ in range(rng.randint(0, 5))
        }

    def resigned(base: bytes) -> bytes:
        obj = {k: v for k, v in json.loads(base).items() if k != "sig"}
        field, value = rng.choice(
            [
                ("time", "0001-01-01T00:00:00+01:00"),
                ("time", "9999-12-31T23:59:59-01:00"),
                ("time", 1700000000),
                ("time", "1700000000"),
                ("time", "2150-01-01T00:00:00Z"),
                ("time", "2025-03-01"),
                ("note", "x" * 5000),
                ("kind", "batch.teleported"),
                ("spec", "batteryledger/2"),
                ("facility_id", "no-such-facility"),
            ]
        )
        obj[field] = value
        return sign_object(obj, rng.choice(keys))[0]

    kinds = [
        "flip",
        "truncate",
        "deep",
        "dup_key",
        "nan",
        "inf",
        "big_number",
        "bad_utf8",
        "utf16",
        "bom",
        "random_json",
        "huge_header",
        "bad_header",
        "no_headers",
        "resigned",
        "sig_non_ascii",
        "empty",
    ]
    for i in range(N_FUZZ):
        base = valid[i % len(valid)]
        kind = kinds[i % len(kinds)]
        hdrs: list[tuple[str, bytes]] | None = None
        if kind == "flip":
            value: bytes | None = flip(base)
        elif kind == "truncate":
            value = base[: rng.randrange(len(base))]
        elif kind == "deep":
            n = rng.choice([50, 500, 1000, 5000, 20000])
            value = base[:-1] + b',"x":' + b"[" * n + b"]" * n + b"}"
        elif kind == "dup_key":
            value = base[:-1] + b',"kind":"batch.extracted"}'
        elif kind == "nan":
            value = base[:-1] + b',"x":NaN}'
        elif kind == "inf":
            value = base[:-1] + b',"x":-Infinity}'
        elif kind == "big_number":
            value = base.replace(b'"kg":"1000"', b'"kg":1e400')
        elif kind == "bad_utf8":
            j = rng.randrange(len(base))
            value = base[:j] + rng.choice([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80"]) + base[j:]
        elif kind == "utf16":
            value = base.decode().encode(rng.choice(["utf-16", "utf-16-le", "utf-32"]))
        elif kind == "bom":
            value = b"\xef\xbb\xbf" + base
        elif kind == "random_json":
            value = json.dumps(random_json()).encode()
        elif kind == "huge_header":
            value = base
            hdrs = [(k, v) for k, v in to_binary(decode(base)).headers] + [
                ("ce_extra", b"h" * (120_000 if i % 170 == 11 else 10_000))
            ]
        elif kind == "bad_header":
            value = base
            hdrs = [
                (k, b"\xff\xfe" if k == rng.choice(["ce_id", "ce_type", "ce_source"]) else v)
                for k, v in to_binary(decode(base)).headers
            ]
        elif kind == "no_headers":
            value, hdrs = base, []
        elif kind == "resigned":
            value = resigned(base)
        elif kind == "sig_non_ascii":
            text = base.decode()
            at = text.index('"value":"') + len('"value":"') + rng.randrange(10)
            value = (text[:at] + rng.choice(["é", "\u200b", "Ａ"]) + text[at + 1 :]).encode()
        else:
            value = rng.choice([None, b"", b" ", b"null", b"[]", b"{}"])
        out.append((kind, value, hdrs))
    return out


def test_ten_thousand_hostile_inputs_through_the_real_worker(rig: Rig) -> None:  # noqa: F811
    rig.start_worker()
    rig.register()
    rng = random.Random(SEED)
    facs = [f for f in rig.chain.facilities.values() if "batch.extracted" in {r.value for r in f.roles}]
    valid = [
        extraction(f.facility_id, f.key, f"FUZZ-{i}-{j}", j)
        for j in range(N_VALID // len(facs) + 1)
        for i, f in enumerate(facs)
    ][:N_VALID]
    fuzz = _mutations(rng, valid, [f.key for f in facs])
    template = {decode(v).event_id: to_binary(decode(v)).headers for v in valid}
    producer = KafkaProducer(
        bootstrap_servers=rig.bootstrap, acks="all", linger_ms=20, max_request_size=2 * 1024 * 1024
    )
    sent: list[tuple[str, str, bytes | None]] = []  # (label, source, value)
    futures = []
    try:
        step = max(1, N_FUZZ // N_VALID)
        for i, (label, value, hdrs) in enumerate(fuzz):
            if i % step == 0 and i // step < len(valid):
                v = valid[i // step]
                futures.append(
                    (
                        "valid",
                        v,
                        producer.send(
                            rig.topics[MATERIAL_EVENTS],
                            key=b"k",
                            value=v,
                            headers=template[decode(v).event_id],
                        ),
                    )
                )
            if hdrs is None:
                hdrs = template[decode(valid[i % len(valid)]).event_id]
            futures.append(
                (
                    label,
                    value,
                    producer.send(rig.topics[MATERIAL_EVENTS], key=b"k", value=value, headers=hdrs),
                )
            )
        producer.flush(300)
        for label, value, fut in futures:
            md = fut.get(300)
            sent.append((label, f"{md.topic}/{md.partition}/{md.offset}", value))
    finally:
        producer.close()

    # what each message should have become, from the client's side: an event id if it decodes
    ids: dict[str, str | None] = {}
    for _, source, value in sent:
        try:
            ids[source] = decode(value or b"").event_id
        except Exception:
            ids[source] = None
    sources = [s for _, s, _ in sent]
    event_ids = sorted({e for e in ids.values() if e})

    def accounted() -> tuple[dict[str, Any], list[str]]:
        with rig.ledger as led:
            dec = led.decisions(event_ids, sources)
        missing = [
            s
            for s in sources
            if s not in dec and not (ids[s] and dec.get(ids[s] or "", ("",))[0] == "appended")
        ]
        return dec, missing

    rig.wait_for(f"{len(sent)} messages to be decided", lambda: not accounted()[1])
    dec, missing = accounted()
    assert not missing
    reasons = Counter(dec[s][2] for s in sources if s in dec and dec[s][0] == "rejected")
    appended_valid = sum(
        1 for label, s, _ in sent if label == "valid" and dec.get(ids[s] or "", ("",))[0] == "appended"
    )
    worker = rig.workers[-1]
    print(
        f"\nfuzz: {len(sent)} messages ({len(sent) - appended_valid} hostile, {appended_valid} valid appended); "
        f"rejected by reason: {dict(sorted(reasons.items()))}; worker alive: {worker.is_running()}"
    )
    assert worker.is_running(), "the worker died under fuzzing\n" + rig.logs()
    assert appended_valid == len(valid), "valid events were lost among the fuzz"
    assert reasons.get("internal_error", 0) == 0, [
        s for s in sources if dec.get(s, ("", 0, ""))[2] == "internal_error"
    ][:5]
    with rig.ledger as led:
        report = verify_ledger(led)
        assert not report.errors, report.errors
