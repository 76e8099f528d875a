"""Ed25519 signatures over canonical bytes, the decode() reason codes, and key files."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError

from batteryledger.sample import DemoChain
from schemas.canonical import canonicalize
from schemas.events import MAX_EVENT_BYTES
from schemas.reasons import EventError, Reason
from schemas.signing import (
    DecodedEvent,
    KeyFileError,
    decode,
    generate_key,
    key_id,
    load_private_key,
    load_public_key,
    public_bytes,
    public_key_b64,
    public_key_from_b64,
    save_private_key,
    sign_event,
    sign_object,
    verify_signature,
)

# What a plant system wrote, as text: whitespace, its own key order, "+00:00" and a trailing zero.
PLANT_TEXT = """
{
    "time" : "2025-03-01T12:00:00+00:00",
    "kind" : "batch.extracted",
    "spec" : "batteryledger/1",
    "facility_id" : "mine-au-greenbushes",
    "outputs" : [ { "material" : "spodumene_concentrate", "kg" : "1250.750", "batch_id" : "AU-SPOD-042" } ]
}
"""


def plant_obj() -> dict[str, Any]:
    obj: dict[str, Any] = json.loads(PLANT_TEXT)
    return obj


def reason_of(raw: bytes, key: Ed25519PrivateKey | None = None) -> str:
    """The reason code decode (+ verification under `key`) gives, or "ok"."""
    try:
        d = decode(raw)
        if key is not None:
            verify_signature(d, key.public_key())
    except EventError as exc:
        return exc.reason.value
    return "ok"


# -- key ids and public keys ---------------------------------------------------------------------
def test_key_id_is_16_hex_of_sha256_of_the_raw_public_key(bl_key: Ed25519PrivateKey) -> None:
    raw = bl_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert len(raw) == 32
    assert public_bytes(bl_key.public_key()) == raw
    kid = key_id(bl_key.public_key())
    assert kid == hashlib.sha256(raw).hexdigest()[:16]
    assert len(kid) == 16 and int(kid, 16) >= 0


def test_key_ids_differ_between_keys() -> None:
    assert key_id(generate_key().public_key()) != key_id(generate_key().public_key())


def test_public_key_base64_round_trip(bl_key: Ed25519PrivateKey) -> None:
    text = public_key_b64(bl_key.public_key())
    assert len(text) == 44
    back = public_key_from_b64(text)
    assert public_bytes(back) == public_bytes(bl_key.public_key())


@pytest.mark.parametrize("text", ["not base64!", base64.b64encode(bytes(31)).decode(), ""])
def test_bad_public_key_text_is_a_key_file_error(text: str) -> None:
    with pytest.raises(KeyFileError, match="not a base64 Ed25519 public key"):
        public_key_from_b64(text)


# -- signing -------------------------------------------------------------------------------------
def test_sign_object_signs_the_canonical_bytes_and_ids_them(bl_key: Ed25519PrivateKey) -> None:
    obj = plant_obj()
    signed, eid = sign_object(obj, bl_key)
    unsigned = canonicalize(obj)
    assert eid == hashlib.sha256(unsigned).hexdigest()
    assert "sig" not in obj  # the caller's object is not modified
    sig = json.loads(signed)["sig"]
    assert sig["alg"] == "Ed25519"
    assert sig["key_id"] == key_id(bl_key.public_key())
    bl_key.public_key().verify(base64.b64decode(sig["value"]), unsigned)  # pyca, independently
    assert signed == canonicalize({**obj, "sig": sig})


def test_sign_then_decode_and_verify(bl_key: Ed25519PrivateKey) -> None:
    signed, eid = sign_object(plant_obj(), bl_key)
    d = decode(signed)
    verify_signature(d, bl_key.public_key())
    assert isinstance(d, DecodedEvent)
    assert d.event_id == eid
    assert d.signed == signed
    assert d.key_id == key_id(bl_key.public_key())
    assert d.facility_id == "mine-au-greenbushes"
    assert d.kind.value == "batch.extracted"


def test_signature_covers_the_bytes_the_plant_meant_not_a_reserialised_model(
    bl_key: Ed25519PrivateKey,
) -> None:
    signed, eid = sign_object(plant_obj(), bl_key)
    # the plant's own values survive: pydantic would have written "Z" and "1250.75"
    assert b'"2025-03-01T12:00:00+00:00"' in signed
    assert b'"1250.750"' in signed
    # a relay re-orders and re-spaces the signed JSON: same object, other bytes
    obj = json.loads(signed)
    respaced = json.dumps(dict(reversed(list(obj.items()))), indent=4, ensure_ascii=True).encode()
    assert respaced != signed
    d = decode(respaced)
    verify_signature(d, bl_key.public_key())
    assert d.event_id == eid
    assert d.signed == signed  # decode canonicalises: what the ledger stores is the same
    assert b'"1250.750"' in d.unsigned and b"+00:00" in d.unsigned


def test_a_model_reserialisation_is_a_different_event(bl_key: Ed25519PrivateKey) -> None:
    """Why verification never re-serialises: the model writes other bytes, so the signature fails."""
    signed, _ = sign_object(plant_obj(), bl_key)
    d = decode(signed)
    sig = json.loads(signed)["sig"]
    rewritten = canonicalize({**d.event.model_dump(mode="json", exclude_none=True), "sig": sig})
    assert rewritten != signed
    assert reason_of(rewritten, bl_key) == "bad_signature"


def test_sign_object_refuses_a_signed_event(bl_key: Ed25519PrivateKey) -> None:
    signed, _ = sign_object(plant_obj(), bl_key)
    with pytest.raises(ValueError, match="already signed"):
        sign_object(json.loads(signed), bl_key)


def test_sign_event_refuses_what_the_ledger_would_reject(bl_key: Ed25519PrivateKey) -> None:
    obj = plant_obj()
    obj["outputs"][0]["kg"] = "-1"
    with pytest.raises(ValidationError):
        sign_event(obj, bl_key)


def test_sign_event_accepts_models_and_dicts(bl_key: Ed25519PrivateKey) -> None:
    d = decode(sign_object(plant_obj(), bl_key)[0])
    from_model, model_id = sign_event(d.event, bl_key)
    dm = decode(from_model)
    verify_signature(dm, bl_key.public_key())
    assert dm.event_id == model_id
    assert b'"time":"2025-03-01T12:00:00Z"' in from_model  # models are signed in their Z form
    _, dict_id = sign_event(plant_obj(), bl_key)
    assert dict_id == d.event_id


def test_demo_events_decode_and_verify_under_their_facility_keys(bl_demo: DemoChain) -> None:
    for ev in bl_demo.good_events:
        d = decode(ev.raw)
        signer = (
            bl_demo.operator_key
            if ev.kind == "facility.registered"
            else bl_demo.facilities[ev.facility_id].key
        )
        verify_signature(d, signer.public_key())
        assert d.event_id == ev.event_id
        assert d.signed == ev.raw


def _sig_value_span(signed: bytes) -> tuple[int, int]:
    value = json.loads(signed)["sig"]["value"].encode()
    start = signed.index(value)
    return start, start + len(value)


def test_no_single_bit_flip_in_the_signed_content_verifies(bl_key: Ed25519PrivateKey) -> None:
    """Flip one bit anywhere: either decode refuses it, or it fails to verify, or (only inside `sig`)
    the signed content and the signature bytes are exactly the ones that were signed."""
    signed, eid = sign_object(plant_obj(), bl_key)
    original = decode(signed)
    outcomes: dict[str, int] = {}
    for i in range(len(signed)):
        for bit in (0x01, 0x20):
            mutated = signed[:i] + bytes([signed[i] ^ bit]) + signed[i + 1 :]
            try:
                d = decode(mutated)
                verify_signature(d, bl_key.public_key())
            except EventError as exc:
                outcomes[exc.reason.value] = outcomes.get(exc.reason.value, 0) + 1
                continue
            outcomes["verified"] = outcomes.get("verified", 0) + 1
            # the only flips that still verify are outside the signed bytes (the unsigned key_id hint)
            assert d.unsigned == original.unsigned, (i, mutated)
            assert d.signature == original.signature, (i, mutated)
            assert d.event_id == eid
    assert outcomes.get("bad_signature", 0) > 100
    assert {"malformed", "schema_invalid", "missing_signature"} <= set(outcomes)


def test_flipping_any_byte_of_the_signature_is_bad_signature(bl_key: Ed25519PrivateKey) -> None:
    signed, _ = sign_object(plant_obj(), bl_key)
    obj = json.loads(signed)
    sig = base64.b64decode(obj["sig"]["value"])
    for i in range(len(sig)):
        bad = sig[:i] + bytes([sig[i] ^ 0xFF]) + sig[i + 1 :]
        obj["sig"]["value"] = base64.b64encode(bad).decode()
        d = decode(json.dumps(obj).encode())
        with pytest.raises(EventError) as info:
            verify_signature(d, bl_key.public_key())
        assert info.value.reason is Reason.BAD_SIGNATURE
        assert d.key_id in info.value.detail and "mine-au-greenbushes" in info.value.detail


@pytest.mark.parametrize(
    ("old", "new", "reason"),
    [
        (b'"1250.750"', b'"1250.751"', "bad_signature"),  # a plausible value: only the signature notices
        (b'"1250.750"', b'"1250.75"', "bad_signature"),  # the same number, other bytes
        (b"12:00:00+00:00", b"12:00:00Z", "bad_signature"),  # the same instant, other bytes
        (b'"AU-SPOD-042"', b'"AU-SPOD-043"', "bad_signature"),
        (b'"1250.750"', b'"-1250.750"', "schema_invalid"),
        (b'"1250.750"', b'"1250.75x"', "schema_invalid"),
        (b'"batch.extracted"', b'"batch.extractes"', "unknown_kind"),
    ],
)
def test_changing_a_field_value(bl_key: Ed25519PrivateKey, old: bytes, new: bytes, reason: str) -> None:
    signed, _ = sign_object(plant_obj(), bl_key)
    assert old in signed
    assert reason_of(signed.replace(old, new), bl_key) == reason


def test_signature_under_another_key_is_bad(bl_key: Ed25519PrivateKey) -> None:
    signed, _ = sign_object(plant_obj(), bl_key)
    assert reason_of(signed, generate_key()) == "bad_signature"


# -- decode reason codes -------------------------------------------------------------------------
def _signed_obj(key: Ed25519PrivateKey) -> dict[str, Any]:
    obj: dict[str, Any] = json.loads(sign_object(plant_obj(), key)[0])
    return obj


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"not json",
        b"{",
        b"[1, 2]",
        b'"a string"',
        b"42",
        b"null",
        b'{"a": 1}\xff',
        b"\xff\xfe{}",
        b'{"a": NaN',
    ],
    ids=[
        "empty",
        "text",
        "truncated",
        "array",
        "string",
        "number",
        "null",
        "bad-utf8-tail",
        "bad-utf8",
        "nan",
    ],
)
def test_malformed(raw: bytes) -> None:
    assert reason_of(raw) == "malformed"


def test_malformed_detail_says_what_it_got() -> None:
    with pytest.raises(EventError) as info:
        decode(b"[1, 2]")
    assert info.value.reason is Reason.MALFORMED
    assert "expected a JSON object, got list" in info.value.detail


@pytest.mark.parametrize("raw", [b"[" * 5000, b'{"a":' * 5000], ids=["arrays", "objects"])
def test_deeply_nested_json_is_malformed_not_a_crash(raw: bytes) -> None:
    assert len(raw) <= MAX_EVENT_BYTES
    assert reason_of(raw) == "malformed"


def test_oversized_is_checked_on_length_before_parsing(bl_key: Ed25519PrivateKey) -> None:
    signed, eid = sign_object(plant_obj(), bl_key)
    at_limit = signed + b" " * (MAX_EVENT_BYTES - len(signed))
    assert len(at_limit) == MAX_EVENT_BYTES
    d = decode(at_limit)  # exactly at the limit: accepted (trailing whitespace is still JSON)
    assert d.event_id == eid
    over = at_limit + b" "
    with pytest.raises(EventError) as info:
        decode(over)
    assert info.value.reason is Reason.OVERSIZED
    assert str(MAX_EVENT_BYTES + 1) in info.value.detail and str(MAX_EVENT_BYTES) in info.value.detail
    assert reason_of(b"[" * (MAX_EVENT_BYTES + 1)) == "oversized"  # not even parsed


@pytest.mark.parametrize(
    "change",
    [
        lambda o: o.pop("sig"),
        lambda o: o.__setitem__("sig", "a string"),
        lambda o: o.__setitem__("sig", None),
        lambda o: o["sig"].__setitem__("alg", "Ed448"),
        lambda o: o["sig"].pop("alg"),
        lambda o: o["sig"].__setitem__("key_id", 7),
        lambda o: o["sig"].pop("value"),
        lambda o: o["sig"].__setitem__("value", ["x"]),
    ],
    ids=["none", "string", "null", "alg-ed448", "no-alg", "key-id-int", "no-value", "value-list"],
)
def test_missing_signature(bl_key: Ed25519PrivateKey, change: Any) -> None:
    obj = _signed_obj(bl_key)
    change(obj)
    assert reason_of(json.dumps(obj).encode()) == "missing_signature"


def test_unsigned_event_is_missing_signature_even_with_an_unknown_kind() -> None:
    assert reason_of(json.dumps(dict(plant_obj(), kind="nope")).encode()) == "missing_signature"


@pytest.mark.parametrize("kind", ["batch.teleported", "", 5, None, ["batch.extracted"]])
def test_unknown_kind(bl_key: Ed25519PrivateKey, kind: Any) -> None:
    obj = _signed_obj(bl_key)
    obj["kind"] = kind
    with pytest.raises(EventError) as info:
        decode(json.dumps(obj).encode())
    assert info.value.reason is Reason.UNKNOWN_KIND
    assert repr(kind) in info.value.detail


def test_missing_kind_is_unknown_kind(bl_key: Ed25519PrivateKey) -> None:
    obj = _signed_obj(bl_key)
    del obj["kind"]
    assert reason_of(json.dumps(obj).encode()) == "unknown_kind"


def test_schema_invalid_names_the_field(bl_key: Ed25519PrivateKey) -> None:
    obj = plant_obj()
    obj["outputs"][0]["kg"] = 1250.75
    with pytest.raises(EventError) as info:
        decode(sign_object(obj, bl_key)[0])  # signed fine, but a float quantity
    assert info.value.reason is Reason.SCHEMA_INVALID
    assert "outputs.0.kg" in info.value.detail and "not JSON floats" in info.value.detail


def test_schema_invalid_summary_is_bounded(bl_key: Ed25519PrivateKey) -> None:
    obj = plant_obj()
    for i in range(8):
        obj[f"extra_{i}"] = i
    with pytest.raises(EventError) as info:
        decode(sign_object(obj, bl_key)[0])
    assert info.value.reason is Reason.SCHEMA_INVALID
    assert "and 3 more" in info.value.detail


def test_unknown_field_in_sig_is_schema_invalid(bl_key: Ed25519PrivateKey) -> None:
    obj = _signed_obj(bl_key)
    obj["sig"]["cert"] = "x"
    with pytest.raises(EventError) as info:
        decode(json.dumps(obj).encode())
    assert info.value.reason is Reason.SCHEMA_INVALID
    assert "cert" in info.value.detail


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("not*base64", "not base64"),
        ("QUJD\nREVG", "not base64"),
        (base64.b64encode(bytes(63)).decode(), "63 bytes"),
        (base64.b64encode(bytes(65)).decode(), "65 bytes"),
        ("", "0 bytes"),
    ],
)
def test_bad_signature_encoding(bl_key: Ed25519PrivateKey, value: str, words: str) -> None:
    obj = _signed_obj(bl_key)
    obj["sig"]["value"] = value
    with pytest.raises(EventError) as info:
        decode(json.dumps(obj).encode())
    assert info.value.reason is Reason.BAD_SIGNATURE
    assert words in info.value.detail


def test_one_signature_has_one_stored_form(bl_key: Ed25519PrivateKey) -> None:
    signed, _ = sign_object(plant_obj(), bl_key)
    obj = json.loads(signed)
    value = obj["sig"]["value"]
    assert value.endswith("==")  # 64 bytes: the last data character carries 4 unused bits
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = alphabet.index(value[-3])
    obj["sig"]["value"] = value[:-3] + alphabet[last ^ 0x01] + "=="
    variant = json.dumps(obj).encode()
    try:
        d = decode(variant)
    except EventError as exc:
        assert exc.reason is Reason.BAD_SIGNATURE
        return
    assert d.signed == signed


def test_decoding_is_independent_of_json_formatting(bl_demo: DemoChain) -> None:
    for ev in bl_demo.good_events[::7]:
        pretty = json.dumps(json.loads(ev.raw), indent=2, ensure_ascii=True).encode()
        d = decode(pretty)
        assert d.signed == ev.raw and d.event_id == ev.event_id


# -- the named artefacts in tests/assets/events --------------------------------------------------
def test_asset_manifest_covers_every_file(bl_assets: Path, bl_manifest: dict[str, dict[str, Any]]) -> None:
    files = {p.name for p in bl_assets.iterdir()} - {
        "manifest.json",
        "README.md",
        "generate.py",
        "signer.pub",
    }
    assert files == set(bl_manifest)
    assert {m["expect"] for m in bl_manifest.values()} >= {
        "ok",
        "bad_signature",
        "malformed",
        "missing_signature",
        "schema_invalid",
        "unknown_kind",
    }


def test_assets_decode_to_their_named_outcome(
    bl_assets: Path, bl_manifest: dict[str, dict[str, Any]]
) -> None:
    public = load_public_key(bl_assets / "signer.pub")
    for name, want in sorted(bl_manifest.items()):
        raw = (bl_assets / name).read_bytes()
        try:
            d = decode(raw)
            verify_signature(d, public)
        except EventError as exc:
            assert exc.reason.value == want["expect"], (name, exc.detail)
            continue
        assert want["expect"] == "ok", name
        assert d.event_id == want["event_id"], name
        assert b'"1250.750"' in d.unsigned and b"+00:00" in d.unsigned


def test_noncanonical_asset_is_stored_as_the_canonical_bytes(bl_assets: Path) -> None:
    valid = decode((bl_assets / "valid.json").read_bytes())
    loose = (bl_assets / "noncanonical-valid.json").read_bytes()
    assert loose != valid.signed and b"\n   " in loose
    assert decode(loose).signed == valid.signed


# -- key files -----------------------------------------------------------------------------------
def test_save_writes_0600_and_a_public_key_file(tmp_path: Path, bl_key: Ed25519PrivateKey) -> None:
    path = tmp_path / "keys" / "plant.key"
    old = os.umask(0)  # a permissive umask must not widen the private key
    try:
        pub_path = save_private_key(bl_key, path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert pub_path == tmp_path / "keys" / "plant.key.pub"
    assert pub_path.read_text().strip() == public_key_b64(bl_key.public_key())
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    loaded = load_private_key(path)
    assert public_bytes(loaded.public_key()) == public_bytes(bl_key.public_key())
    assert public_bytes(load_public_key(pub_path)) == public_bytes(bl_key.public_key())


def test_save_refuses_to_overwrite(tmp_path: Path, bl_key: Ed25519PrivateKey) -> None:
    path = tmp_path / "plant.key"
    save_private_key(bl_key, path)
    before = path.read_bytes()
    with pytest.raises(KeyFileError, match="refusing to overwrite") as info:
        save_private_key(generate_key(), path)
    assert str(path) in str(info.value)
    assert path.read_bytes() == before


def test_passphrase_round_trip(tmp_path: Path, bl_key: Ed25519PrivateKey) -> None:
    path = tmp_path / "plant.key"
    save_private_key(bl_key, path, passphrase=b"correct horse")
    assert path.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    loaded = load_private_key(path, passphrase=b"correct horse")
    assert public_bytes(loaded.public_key()) == public_bytes(bl_key.public_key())
    signed, _ = sign_object(plant_obj(), loaded)
    verify_signature(decode(signed), bl_key.public_key())


def test_wrong_passphrase_is_a_key_file_error_naming_the_file(
    tmp_path: Path, bl_key: Ed25519PrivateKey
) -> None:
    path = tmp_path / "plant.key"
    save_private_key(bl_key, path, passphrase=b"correct horse")
    with pytest.raises(KeyFileError) as info:
        load_private_key(path, passphrase=b"battery staple")
    assert str(path) in info.value.diagnostics()
    assert "wrong passphrase" in info.value.diagnostics()


def test_missing_passphrase_names_the_option(tmp_path: Path, bl_key: Ed25519PrivateKey) -> None:
    path = tmp_path / "plant.key"
    save_private_key(bl_key, path, passphrase=b"correct horse")
    with pytest.raises(KeyFileError) as info:
        load_private_key(path)
    assert "--passphrase-env" in str(info.value)
    assert str(path) in str(info.value) and "encrypted" in str(info.value)


def test_passphrase_for_an_unencrypted_key_says_so(tmp_path: Path, bl_key: Ed25519PrivateKey) -> None:
    path = tmp_path / "plant.key"
    save_private_key(bl_key, path)
    with pytest.raises(KeyFileError) as info:
        load_private_key(path, passphrase=b"not needed")
    assert "is encrypted" not in str(info.value)
    assert "not encrypted" in str(info.value)


def test_missing_key_file(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="cannot read key file"):
        load_private_key(tmp_path / "absent.key")
    with pytest.raises(KeyFileError, match="cannot read public key file"):
        load_public_key(tmp_path / "absent.pub")


def test_a_non_ed25519_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ec.key"
    ec_key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(
        ec_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    with pytest.raises(KeyFileError, match="not an Ed25519 key"):
        load_private_key(path)
    pub = tmp_path / "ec.pub"
    pub.write_bytes(
        ec_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    with pytest.raises(KeyFileError, match="not an Ed25519 public key"):
        load_public_key(pub)


def test_garbage_key_file(tmp_path: Path) -> None:
    path = tmp_path / "junk.key"
    path.write_bytes(b"-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")
    with pytest.raises(KeyFileError, match="not a readable private key"):
        load_private_key(path)


def test_public_key_from_pem(tmp_path: Path, bl_key: Ed25519PrivateKey) -> None:
    pem = bl_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    path = tmp_path / "plant.pem"
    path.write_bytes(pem)
    assert public_bytes(load_public_key(path)) == public_bytes(bl_key.public_key())
