"""Regenerate the event artefacts in this folder: `.venv/bin/python tests/assets/events/generate.py`.

Deterministic: the signer key comes from a fixed seed and Ed25519 signatures are deterministic, so a
rerun writes the same bytes. manifest.json says what each file must decode to.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from schemas.signing import public_key_b64, sign_object

HERE = Path(__file__).resolve().parent
SEED = hashlib.sha256(b"batteryledger test asset signer").digest()

# What a plant system wrote: RFC 3339 with "+00:00" and a quantity with a trailing zero. Pydantic would
# re-serialise these as "Z" and "1250.75"; the signature must cover the bytes as written.
PLANT_EVENT: dict[str, Any] = {
    "spec": "batteryledger/1",
    "kind": "batch.extracted",
    "facility_id": "mine-au-greenbushes",
    "time": "2025-03-01T12:00:00+00:00",
    "outputs": [
        {
            "batch_id": "AU-SPOD-042",
            "material": "spodumene_concentrate",
            "kg": "1250.750",
            "contained_kg": {"li": "35.021"},
        }
    ],
    "site": "Greenbushes pit 3",
}


def main() -> None:
    key = Ed25519PrivateKey.from_private_bytes(SEED)
    files: dict[str, bytes] = {}
    manifest: dict[str, dict[str, Any]] = {}

    def add(name: str, data: bytes, expect: str, why: str, **more: Any) -> None:
        files[name] = data
        manifest[name] = {"expect": expect, "why": why, **more}

    signed, event_id = sign_object(PLANT_EVENT, key)
    add("valid.json", signed, "ok", "canonical signed bytes", event_id=event_id)
    obj = json.loads(signed)
    # the same signed object as a plant might send it: reordered, indented, non-ASCII-escaped
    reordered = dict(reversed(list(obj.items())))
    add(
        "noncanonical-valid.json",
        json.dumps(reordered, indent=3, ensure_ascii=True).encode() + b"\n",
        "ok",
        "same object, other key order and whitespace: decode canonicalises, so it verifies",
        event_id=event_id,
    )
    add(
        "tampered-kg.json",
        signed.replace(b'"1250.750"', b'"1250.760"'),
        "bad_signature",
        "10 kg added after signing",
    )
    add(
        "tampered-time.json",
        signed.replace(b"12:00:00+00:00", b"12:00:01+00:00"),
        "bad_signature",
        "time moved one second after signing",
    )
    short = dict(obj, sig=dict(obj["sig"], value=base64.b64encode(bytes(63)).decode()))
    add("sig-short.json", json.dumps(short).encode(), "bad_signature", "63-byte signature")
    notb64 = dict(obj, sig=dict(obj["sig"], value="not*base64*at*all"))
    add("sig-not-base64.json", json.dumps(notb64).encode(), "bad_signature", "signature is not base64")
    wrong_alg = dict(obj, sig=dict(obj["sig"], alg="Ed448"))
    add("sig-wrong-alg.json", json.dumps(wrong_alg).encode(), "missing_signature", "alg is not Ed25519")
    add("unsigned.json", json.dumps(PLANT_EVENT).encode(), "missing_signature", "no sig object")
    add(
        "unknown-kind.json",
        sign_object(dict(PLANT_EVENT, kind="batch.teleported"), key)[0],
        "unknown_kind",
        "kind is not in the contract",
    )
    floaty = json.loads(json.dumps(PLANT_EVENT))
    floaty["outputs"][0]["kg"] = 1250.75
    add("float-quantity.json", sign_object(floaty, key)[0], "schema_invalid", "kg as a JSON float")
    add(
        "unknown-field.json",
        sign_object(dict(PLANT_EVENT, colour="green"), key)[0],
        "schema_invalid",
        "a field the contract does not define",
    )
    add("truncated.json", signed[: len(signed) // 2], "malformed", "cut in the middle")
    add("array.json", b"[" + signed + b"]", "malformed", "a JSON array, not an object")
    add("not-utf8.json", signed.replace(b"Greenbushes", b"Gr\xffnbushes"), "malformed", "invalid UTF-8")

    for name, data in files.items():
        (HERE / name).write_bytes(data)
    (HERE / "signer.pub").write_text(public_key_b64(key.public_key()) + "\n")
    (HERE / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
