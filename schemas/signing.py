"""Ed25519 keys and signed events.

A signed event is the event's JSON object plus `"sig": {"alg": "Ed25519", "key_id": ..., "value": ...}`.
The signature covers the RFC 8785 canonical bytes of the object without `sig`; the event id is the
SHA-256 of those same bytes, so a replay is recognisably the same event. Verification works on the bytes
received (parsed, `sig` removed, canonicalised), never on a re-serialised model.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ValidationError

from schemas.canonical import CanonicalError, canonicalize, encode_validated
from schemas.events import MAX_EVENT_BYTES, Event, Kind, event_to_json_obj, parse_event
from schemas.reasons import EventError, Reason

try:  # the fast decode path (decode); without it every event takes the strict path
    import orjson as _orjson

    _SORTED = _orjson.OPT_SORT_KEYS
except ImportError:  # pragma: no cover - orjson is a dependency
    _orjson = None  # type: ignore[assignment]
    _SORTED = 0

SIG_FIELD = "sig"
ALG = "Ed25519"


class KeyFileError(Exception):
    def diagnostics(self) -> str:
        return str(self)


def key_id(public_key: Ed25519PublicKey) -> str:
    """Fingerprint: first 8 bytes of SHA-256 of the raw public key, hex (16 characters)."""
    return hashlib.sha256(public_bytes(public_key)).hexdigest()[:16]


def public_bytes(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_b64(public_key: Ed25519PublicKey) -> str:
    return base64.b64encode(public_bytes(public_key)).decode("ascii")


def public_key_from_b64(text: str) -> Ed25519PublicKey:
    try:
        raw = base64.b64decode(text, validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except (binascii.Error, ValueError) as exc:
        raise KeyFileError(f"not a base64 Ed25519 public key: {exc}") from exc


def generate_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def save_private_key(key: Ed25519PrivateKey, path: Path, passphrase: bytes | None = None) -> Path:
    """Write PKCS#8 PEM with mode 0600 (created so, never widened), plus `<path>.pub` (base64 raw)."""
    enc: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    )
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        raise KeyFileError(f"{path} exists; refusing to overwrite a private key")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    os.chmod(path, 0o600)
    pub_path = path.with_name(path.name + ".pub")
    pub_path.write_text(public_key_b64(key.public_key()) + "\n")
    return pub_path


def load_private_key(path: Path, passphrase: bytes | None = None) -> Ed25519PrivateKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc.strerror}") from exc
    try:
        key = serialization.load_pem_private_key(data, password=passphrase)
    except TypeError as exc:
        if passphrase:
            raise KeyFileError(f"{path} is not encrypted: drop --passphrase-env") from exc
        raise KeyFileError(f"{path} is encrypted: give its passphrase (--passphrase-env VAR)") from exc
    except ValueError as exc:
        raise KeyFileError(f"{path}: not a readable private key or wrong passphrase ({exc})") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path} holds a {type(key).__name__}, not an Ed25519 key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    try:
        text = path.read_text().strip()
    except OSError as exc:
        raise KeyFileError(f"cannot read public key file {path}: {exc.strerror}") from exc
    if text.startswith("-----BEGIN"):
        key = serialization.load_pem_public_key(text.encode())
        if not isinstance(key, Ed25519PublicKey):
            raise KeyFileError(f"{path} is not an Ed25519 public key")
        return key
    return public_key_from_b64(text)


def event_id_of(unsigned: bytes) -> str:
    """An event's id: the SHA-256 (hex) of its unsigned canonical bytes."""
    return hashlib.sha256(unsigned).hexdigest()


def _sig_member(kid: str, signature: bytes) -> bytes:
    """The canonical `"sig":{...}` member: its keys sorted, all values ASCII needing no escape."""
    if not kid.isascii() or not kid.isalnum():
        raise ValueError(f"key id {kid!r} is not a hex fingerprint")
    value = base64.b64encode(signature)
    return b'"sig":{"alg":"%s","key_id":"%s","value":"%s"}' % (ALG.encode(), kid.encode(), value)


def _split_members(obj: dict[str, Any], encode: Any) -> tuple[bytes, bytes]:
    """Canonical members of `obj` sorting before "sig" and after it, each without braces.

    RFC 8785 orders members by their keys' UTF-16 code units; against the ASCII key "sig" that is the
    same as Python's code point comparison (an astral character sorts above any ASCII character both
    ways), and canonical objects are compositional, so `{` lo `,` "sig" `,` hi `}` is the canonical
    signed object and `{` lo `,` hi `}` the unsigned one: each half is encoded once, for both.
    """
    if not all(isinstance(k, str) for k in obj):
        raise CanonicalError("object keys must be strings")
    lo = encode({k: v for k, v in obj.items() if k < SIG_FIELD})
    hi = encode({k: v for k, v in obj.items() if k > SIG_FIELD})
    return lo[1:-1], hi[1:-1]


Sign = Callable[[bytes], bytes]


def signer(key: Ed25519PrivateKey, *, backend: str | None = None) -> Sign:
    """A function giving `key`'s Ed25519 signature of a message: libsodium's (PyNaCl) when installed,
    about 1.5 times as fast as pyca's on this project's machines, else pyca's (`key.sign`).

    Ed25519 signing is deterministic (RFC 8032, 5.1.6: the nonce is a hash of the key and the message),
    so both libraries give the same 64 bytes for the same key and message; tests/unit/test_verify_libs.py
    holds them equal on RFC 8032's test vectors and on random keys and messages. The key stays a
    `cryptography` object for loading, storing and deriving; libsodium gets its 32-byte seed, kept in
    the returned function for its life (one Publisher's). `backend` ("libsodium" or "pyca") is for
    tests and benchmarks; `BATTERYLEDGER_ED25519=pyca` forces pyca, as for verifying.
    """
    which = backend or ED25519_BACKEND
    if which == "pyca":
        return key.sign
    if which != "libsodium":
        raise ValueError(f"unknown Ed25519 backend {which!r}: 'libsodium' or 'pyca'")
    from nacl.bindings import crypto_sign, crypto_sign_seed_keypair

    public, secret = crypto_sign_seed_keypair(key.private_bytes_raw())
    if public != public_bytes(key.public_key()):  # pragma: no cover - the libraries derive keys alike
        raise RuntimeError("libsodium derived another public key from this seed: sign with pyca")

    def sign(message: bytes) -> bytes:
        return crypto_sign(message, secret)[:64]  # signature || message: the first 64 bytes

    return sign


def _sign_members(
    lo: bytes, hi: bytes, key: Ed25519PrivateKey, kid: str, sign: Sign | None = None
) -> tuple[bytes, str]:
    unsigned = b"{" + lo + (b"," if lo and hi else b"") + hi + b"}"
    sig = _sig_member(kid, (sign or key.sign)(unsigned))
    signed = b"{" + b",".join(part for part in (lo, sig, hi) if part) + b"}"
    return signed, event_id_of(unsigned)


def sign_object(obj: dict[str, Any], key: Ed25519PrivateKey) -> tuple[bytes, str]:
    """Sign an unsigned event object, valid or not. Returns (canonical signed bytes, event id).

    Any JSON value is canonicalised (`canonicalize`: the C json encoder where it equals RFC 8785,
    else the `rfc8785` library); a value with no JSON form raises CanonicalError (a ValueError).
    """
    if SIG_FIELD in obj:
        raise ValueError("event is already signed")
    lo, hi = _split_members(obj, canonicalize)
    return _sign_members(lo, hi, key, key_id(key.public_key()))


def sign_validated(
    obj: dict[str, Any], key: Ed25519PrivateKey, kid: str | None = None, sign: Sign | None = None
) -> tuple[bytes, str]:
    """`sign_object` for an object that passed `parse_event`: the same bytes, without walking it.

    A schema-valid event is in the fast domain of `encode_validated` (strings, ints far below 2**53,
    bools, lists, objects with ASCII schema keys; see `decode`, which relies on the same fact), so its
    canonical bytes come straight from the C encoder. A valid object holding Python values with no JSON
    form (a datetime, a Decimal) falls back to `sign_object`, which refuses it with CanonicalError.
    `kid` is `key_id(key.public_key())` and `sign` is `signer(key)`, passed by callers that sign many
    events with one key (the same bytes as `key.sign`, faster).
    tests/unit/test_signing_fast.py holds the output equal to `decode(signed).signed` / `.event_id`.
    """
    if SIG_FIELD in obj:
        raise ValueError("event is already signed")
    try:
        lo, hi = _split_members(obj, encode_validated)
    except CanonicalError:
        return sign_object(obj, key)
    return _sign_members(lo, hi, key, kid if kid is not None else key_id(key.public_key()), sign)


def sign_event(event: BaseModel | dict[str, Any], key: Ed25519PrivateKey) -> tuple[bytes, str]:
    """Validate then sign an event (model or dict). Returns (canonical signed bytes, event id)."""
    obj = event_to_json_obj(event) if isinstance(event, BaseModel) else dict(event)
    parse_event(obj)  # refuse to sign what the ledger would reject as schema-invalid
    return sign_validated(obj, key)


@dataclass(frozen=True, slots=True)
class DecodedEvent:
    """A signed event parsed from wire bytes; its signature is not yet checked."""

    event_id: str
    unsigned: bytes  # canonical bytes the signature covers
    signed: bytes  # canonical bytes of the whole signed event: what the ledger stores
    key_id: str
    signature: bytes
    event: Event

    @classmethod
    def of(cls, unsigned: bytes, signed: bytes, key_id: str, signature: bytes, event: Event) -> DecodedEvent:
        """A decoded event from its parts; the id is the SHA-256 of the unsigned canonical bytes."""
        return cls(event_id_of(unsigned), unsigned, signed, key_id, signature, event)

    @property
    def kind(self) -> Kind:
        k = self.event.kind
        return k if type(k) is Kind else Kind(k)  # a validated model holds the member already

    @property
    def facility_id(self) -> str:
        return self.event.facility_id


def decode(raw: bytes) -> DecodedEvent:
    """Parse and validate wire bytes. Raises EventError with a stable reason.

    Bytes that are already the canonical encoding of a valid signed event (what every signer of this
    project sends) take :func:`_decode_canonical`; anything else, and anything that path cannot vouch
    for, is decided by the strict path below, so both give the same answer on every input.
    """
    # 1. size limit first: never parse an arbitrarily large body
    if len(raw) > MAX_EVENT_BYTES:
        raise EventError(Reason.OVERSIZED, f"event is {len(raw)} bytes; the limit is {MAX_EVENT_BYTES}")
    fast = _decode_canonical(raw)
    if fast is not None:
        return fast
    return _decode_strict(raw)


def _decode_canonical(raw: bytes) -> DecodedEvent | None:
    """The fast path: a decoded event when `raw` is exactly the canonical bytes of a valid signed
    event, else None (never raises; the strict path then decides and words any error).

    orjson parses (RFC 8259, strict UTF-8, no NaN, no BOM; unlike the strict parser it keeps the last
    of duplicate keys and reads huge integers as floats) and re-encodes with sorted keys, which for the
    value domain a schema-valid event can hold is byte-identical to RFC 8785 (tests/unit/
    test_decode_fast.py checks every code point and holds this path equal to the strict one). The
    re-encoding must give back `raw` exactly, so nothing the strict parser would read differently
    (duplicate keys, floats, escapes spelled another way, whitespace) passes here.
    """
    if _orjson is None or type(raw) is not bytes:
        return None
    try:
        obj = _orjson.loads(raw)
        if type(obj) is not dict:
            return None
        sig = obj.pop(SIG_FIELD, None)
        if (
            type(sig) is not dict
            or len(sig) != 3
            or sig.get("alg") != ALG
            or type(sig.get("key_id")) is not str
            or type(sig.get("value")) is not str
            or not sig["value"].isascii()
        ):
            return None
        signature = base64.b64decode(sig["value"], validate=True)
        if len(signature) != 64 or base64.b64encode(signature).decode("ascii") != sig["value"]:
            return None
        kind = obj.get("kind")
        if type(kind) is not str or kind not in Kind._value2member_map_:
            return None
        event = parse_event(obj)
        unsigned = _orjson.dumps(obj, option=_SORTED)
        obj[SIG_FIELD] = sig
        if _orjson.dumps(obj, option=_SORTED) != raw:
            return None
    except Exception:  # malformed, schema-invalid, not canonical: the strict path says which
        return None
    return DecodedEvent.of(unsigned, raw, sig["key_id"], signature, event)


def _decode_strict(raw: bytes) -> DecodedEvent:
    """The strict path: the standard library's parser with duplicate-key and constant checks, each
    failure with its own reason (the order of the checks is part of the contract)."""
    # 2. JSON object, UTF-8
    obj = loads_strict(raw)
    if not isinstance(obj, dict):
        raise EventError(Reason.MALFORMED, f"expected a JSON object, got {type(obj).__name__}")
    # 3. detached signature
    sig = obj.pop(SIG_FIELD, None)
    if not isinstance(sig, dict):
        raise EventError(Reason.MISSING_SIGNATURE, 'no "sig" object: events must be signed')
    if (
        sig.get("alg") != ALG
        or not isinstance(sig.get("key_id"), str)
        or not isinstance(sig.get("value"), str)
    ):
        raise EventError(
            Reason.MISSING_SIGNATURE, 'sig must be {"alg": "Ed25519", "key_id": ..., "value": ...}'
        )
    if set(sig) != {"alg", "key_id", "value"}:
        raise EventError(
            Reason.SCHEMA_INVALID, f"unknown fields in sig: {sorted(set(sig) - {'alg', 'key_id', 'value'})}"
        )
    if not sig["value"].isascii():
        raise EventError(Reason.SCHEMA_INVALID, "sig.value must be ASCII base64 (standard alphabet)")
    try:
        signature = base64.b64decode(sig["value"], validate=True)
    except (binascii.Error, ValueError):
        raise EventError(Reason.BAD_SIGNATURE, "signature is not base64") from None
    # one signature, one spelling: padding bits must be zero, or a relay could change the stored bytes
    # (and so the leaf) of an event without touching its signature
    if base64.b64encode(signature).decode("ascii") != sig["value"]:
        raise EventError(
            Reason.BAD_SIGNATURE,
            "signature is not in canonical base64 (standard alphabet, zero padding bits)",
        )
    if len(signature) != 64:
        raise EventError(Reason.BAD_SIGNATURE, f"signature is {len(signature)} bytes, Ed25519 needs 64")
    # 4. kind known?
    kind = obj.get("kind")
    if not isinstance(kind, str) or kind not in Kind._value2member_map_:
        raise EventError(Reason.UNKNOWN_KIND, f"unknown event kind {kind!r}")
    # 5. schema (before canonicalising: a valid event holds only strings, bounded ints, bools, lists
    #    and objects with schema keys, which is exactly the fast path of `encode_validated`)
    try:
        event = parse_event(obj)
    except ValidationError as exc:
        raise EventError(Reason.SCHEMA_INVALID, _summarise(exc)) from None
    # 6. canonical bytes of what was received (RFC 8785); id = SHA-256 of them
    try:
        unsigned = encode_validated(obj)
        obj[SIG_FIELD] = sig
        signed = encode_validated(obj)
    except CanonicalError as exc:
        raise EventError(Reason.MALFORMED, f"not canonicalisable JSON: {exc}") from None
    return DecodedEvent.of(unsigned, signed, sig["key_id"], signature, event)


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise EventError(Reason.MALFORMED, f"duplicate JSON key {dup!r}: each key may appear once")
    return obj


def _no_constants(name: str) -> Any:
    raise EventError(Reason.MALFORMED, f"{name} is not JSON")


def loads_strict(raw: bytes) -> Any:
    """JSON as RFC 8259 and I-JSON (RFC 7493) read it: UTF-8 only (no BOM, no UTF-16/32), no duplicate
    keys, no NaN/Infinity. Raises EventError(MALFORMED)."""
    try:
        text = raw.decode("utf-8")  # strict: json.loads(bytes) would also guess UTF-16/32
    except UnicodeDecodeError as exc:
        raise EventError(Reason.MALFORMED, f"not UTF-8: {exc}") from None
    if text.startswith("\ufeff"):
        raise EventError(Reason.MALFORMED, "starts with a byte order mark: send UTF-8 without a BOM")
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constants)
    except ValueError as exc:
        raise EventError(Reason.MALFORMED, f"not JSON: {exc}") from None
    except RecursionError:
        raise EventError(Reason.MALFORMED, "JSON nested too deeply") from None


def verify_signature(decoded: DecodedEvent, public_key: Ed25519PublicKey | bytes) -> None:
    """Raise BAD_SIGNATURE unless the event's signature verifies (key as an object or 32 raw bytes)."""
    raw = public_key if isinstance(public_key, bytes) else public_bytes(public_key)
    if not verify_ed25519(raw, decoded.signature, decoded.unsigned):
        raise EventError(
            Reason.BAD_SIGNATURE,
            f"signature does not verify under key {decoded.key_id} of {decoded.facility_id}",
        )


# -- Ed25519 verification: one rule, two libraries ------------------------------------------------------
#
# pyca/cryptography (OpenSSL) and libsodium (PyNaCl) do not agree on every Ed25519 edge case ("Taming
# the many EdDSAs", Chalkias, Garillot, Nikolaenko 2020): libsodium refuses small-order public keys and
# small-order R, OpenSSL accepts them. The project's rule is strict and is checked here *before* either
# library runs, so the answer never depends on which one is installed (tests/unit/test_verify_libs.py
# holds both to it on the speccheck vectors and on every small-order and non-canonical encoding):
#   1. a signature is 64 bytes and a public key 32;
#   2. S is canonical: S < L (RFC 8032 section 5.1.7 step 1; no malleable twin S + L);
#   3. A and R are canonical encodings: y < p (so x = 0 with the sign bit set is out too, see 4);
#   4. neither A nor R is a small-order point (order 1, 2, 4 or 8): such a key "verifies" signatures
#      on messages its holder never saw, and such an R makes a signature that does not bind its key;
#   5. then the cofactorless equation [S]B = R + [k]A, compared as encodings (both libraries).
# Mixed-order points (a torsion component plus a prime-order one) are left to step 5, where both
# libraries compute the same cofactorless check.

#: 2^255 - 19, the field prime.
ED25519_P = 2**255 - 19
#: The prime order of the base point.
ED25519_L = 2**252 + 27742317777372353535851937790883648493
_Y_MASK = (1 << 255) - 1
# y coordinates of the 8 small-order points: 1 (identity), p - 1 (order 2), 0 (the two of order 4),
# and the two y values of the four points of order 8. A point with one of these y is small order
# whatever its sign bit.
_Y8 = int.from_bytes(
    bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"), "little"
)
_SMALL_ORDER_Y = frozenset({0, 1, ED25519_P - 1, _Y8 & _Y_MASK, ED25519_P - (_Y8 & _Y_MASK)})


def ed25519_point_is_strict(encoded: bytes) -> bool:
    """Rules 3 and 4 for one 32-byte point encoding: canonical (y < p) and not of small order."""
    if len(encoded) != 32:
        return False
    y = int.from_bytes(encoded, "little") & _Y_MASK
    return y < ED25519_P and y not in _SMALL_ORDER_Y


def ed25519_strict_precheck(public_key: bytes, signature: bytes) -> bool:
    """Rules 1 to 4 (see above): what the project refuses before any library looks at a signature."""
    return (
        len(signature) == 64
        and int.from_bytes(signature[32:], "little") < ED25519_L
        and ed25519_point_is_strict(public_key)
        and ed25519_point_is_strict(signature[:32])
    )


def _verify_pyca(public_key: bytes, signature: bytes, message: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def _load_nacl() -> Any:
    """libsodium's verify through PyNaCl's bindings, or None when PyNaCl is not installed."""
    if os.environ.get("BATTERYLEDGER_ED25519") == "pyca":
        return None
    try:
        from nacl.bindings import crypto_sign_open
        from nacl.exceptions import BadSignatureError
    except ImportError:
        return None

    def verify(public_key: bytes, signature: bytes, message: bytes) -> bool:
        try:
            crypto_sign_open(signature + message, public_key)
        except (BadSignatureError, ValueError):
            return False
        return True

    return verify


_nacl_verify = _load_nacl()

#: Which library checks the equation (rule 5): "libsodium" when PyNaCl is importable (about twice as
#: fast), else "pyca". `BATTERYLEDGER_ED25519=pyca` forces pyca. The answer is the same either way.
ED25519_BACKEND = "libsodium" if _nacl_verify is not None else "pyca"


def verify_ed25519(
    public_key: bytes, signature: bytes, message: bytes, *, backend: str | None = None
) -> bool:
    """True when `signature` is a valid Ed25519 signature of `message` under the raw 32-byte key,
    by the project's strict rule (see above). `backend` ("libsodium" or "pyca") is for tests and
    benchmarks; by default the fastest library installed is used."""
    if not ed25519_strict_precheck(public_key, signature):
        return False
    which = backend or ED25519_BACKEND
    if which == "libsodium":
        if _nacl_verify is None:
            raise RuntimeError("PyNaCl is not installed: libsodium verification is unavailable")
        return bool(_nacl_verify(public_key, signature, message))
    if which == "pyca":
        return _verify_pyca(public_key, signature, message)
    raise ValueError(f"unknown Ed25519 backend {which!r}: 'libsodium' or 'pyca'")


def _summarise(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err["loc"]) or "(event)"
        parts.append(f"{loc}: {err['msg']}")
    more = exc.error_count() - 5
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")
