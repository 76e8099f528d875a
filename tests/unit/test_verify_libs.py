"""Ed25519 verification: libsodium (PyNaCl) and pyca (OpenSSL) give the same answer under our rule.

The speccheck vectors (tests/assets/ed25519, from "Taming the many EdDSAs") are where Ed25519
libraries disagree. The project's strict rule (`schemas.signing.ed25519_strict_precheck`) runs before
either library, so every vector, every small-order and every non-canonical encoding gets one answer.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from schemas.signing import (
    ED25519_L,
    ED25519_P,
    decode,
    ed25519_point_is_strict,
    ed25519_strict_precheck,
    generate_key,
    public_bytes,
    sign_object,
    sign_validated,
    signer,
    verify_ed25519,
)

nacl_bindings = pytest.importorskip("nacl.bindings")
from nacl.exceptions import BadSignatureError  # noqa: E402

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "ed25519"
BACKENDS = ("libsodium", "pyca")

# The strict rule's verdict on each speccheck vector, 0 to 11: only vector 3 (mixed-order A and R,
# valid by the cofactorless equation with canonical S) is accepted; see tests/assets/ed25519/SOURCE.md.
STRICT_EXPECTED = [False, False, False, True, False, False, False, False, False, False, False, False]


def speccheck() -> list[tuple[bytes, bytes, bytes]]:
    lines = (ASSETS / "speccheck_cases.txt").read_text().split()
    n = int(lines[0])
    fields = [line.split("=", 1)[1] for line in lines[1:]]
    vectors = [tuple(bytes.fromhex(f) for f in fields[i : i + 3]) for i in range(0, len(fields), 3)]
    assert len(vectors) == n == 12
    return vectors  # type: ignore[return-value]


def raw_pyca(pk: bytes, sig: bytes, msg: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(pk).verify(sig, msg)
    except (InvalidSignature, ValueError):
        return False
    return True


def raw_sodium(pk: bytes, sig: bytes, msg: bytes) -> bool:
    try:
        nacl_bindings.crypto_sign_open(sig + msg, pk)
    except (BadSignatureError, ValueError):
        return False
    return True


def test_speccheck_vectors_one_answer_under_the_strict_rule() -> None:
    for i, (msg, pk, sig) in enumerate(speccheck()):
        answers = {b: verify_ed25519(pk, sig, msg, backend=b) for b in BACKENDS}
        assert answers["libsodium"] == answers["pyca"] == STRICT_EXPECTED[i], (i, answers)


def test_every_raw_disagreement_is_refused_by_the_precheck() -> None:
    disagreements = []
    for i, (msg, pk, sig) in enumerate(speccheck()):
        if raw_pyca(pk, sig, msg) != raw_sodium(pk, sig, msg):
            disagreements.append(i)
            assert not ed25519_strict_precheck(pk, sig), (
                f"vector {i}: libraries disagree, rule lets it through"
            )
    # the libraries installed here do disagree somewhere (small-order keys): the rule is not decoration
    assert disagreements, "pyca and libsodium agree on every vector: re-check why the precheck exists"


def _small_order_and_noncanonical_encodings() -> list[bytes]:
    y8 = int.from_bytes(
        bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"), "little"
    )
    ys = {0, 1, ED25519_P - 1, y8, ED25519_P - y8}
    ys |= {ED25519_P + k for k in range(19)}  # every y >= p that fits in 255 bits
    out = []
    for y in sorted(ys):
        for sign in (0, 1):
            out.append((y | (sign << 255)).to_bytes(32, "little"))
    return out


@pytest.mark.parametrize("enc", _small_order_and_noncanonical_encodings(), ids=lambda b: b.hex()[:8])
def test_small_order_and_noncanonical_points_are_refused_as_key_and_as_r(enc: bytes) -> None:
    assert not ed25519_point_is_strict(enc)
    msg = b"batteryledger"
    key = generate_key()
    good = key.sign(msg)
    pk = public_bytes(key.public_key())
    for b in BACKENDS:
        assert verify_ed25519(enc, good, msg, backend=b) is False
        assert verify_ed25519(pk, enc + good[32:], msg, backend=b) is False
        # S = 0 with R = A = the point: the classic "verifies anything" forgery for small-order keys
        assert verify_ed25519(enc, enc + bytes(32), msg, backend=b) is False


def test_non_canonical_s_is_refused_by_both() -> None:
    msg = b"event bytes"
    key = generate_key()
    sig = key.sign(msg)
    pk = public_bytes(key.public_key())
    s = int.from_bytes(sig[32:], "little")
    for bad_s in (s + ED25519_L, ED25519_L, 2**256 - 1):
        if bad_s >= 2**256:
            continue
        forged = sig[:32] + bad_s.to_bytes(32, "little")
        for b in BACKENDS:
            assert verify_ed25519(pk, forged, msg, backend=b) is False


def test_both_backends_agree_on_valid_and_corrupted_signatures() -> None:
    for i in range(200):
        key = generate_key()
        pk = public_bytes(key.public_key())
        msg = hashlib.sha256(i.to_bytes(4, "big")).digest() * (i % 5)
        sig = key.sign(msg)
        for b in BACKENDS:
            assert verify_ed25519(pk, sig, msg, backend=b) is True
        flipped = bytearray(sig)
        flipped[i % 64] ^= 1 << (i % 8)
        other = msg + b"x"
        answers = {(b, m, bytes(s)) for b in BACKENDS for m, s in ((msg, flipped), (other, sig))}
        for b, m, s in answers:
            assert verify_ed25519(pk, s, m, backend=b) is False


def test_wrong_lengths_are_refused() -> None:
    key = generate_key()
    pk = public_bytes(key.public_key())
    sig = key.sign(b"m")
    for b in BACKENDS:
        assert verify_ed25519(pk[:31], sig, b"m", backend=b) is False
        assert verify_ed25519(pk, sig[:63], b"m", backend=b) is False
        assert verify_ed25519(pk, sig + b"\0", b"m", backend=b) is False


def test_verify_signature_gives_the_same_verdict_with_either_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    """The event-level check (what the verify agent, `verify` and the bundle verifier call)."""
    import schemas.signing as signing
    from schemas.reasons import EventError

    key, other = generate_key(), generate_key()
    obj = {
        "spec": "batteryledger/1",
        "kind": "batch.extracted",
        "facility_id": "mine-a",
        "time": "2025-03-01T00:00:00Z",
        "outputs": [
            {
                "batch_id": "ORE-1",
                "material": "spodumene_concentrate",
                "kg": "1000",
                "contained_kg": {"li": "28"},
            }
        ],
    }
    decoded = signing.decode(signing.sign_object(obj, key)[0])
    for backend in BACKENDS:
        monkeypatch.setattr(signing, "ED25519_BACKEND", backend)
        signing.verify_signature(decoded, key.public_key())
        with pytest.raises(EventError) as err:
            signing.verify_signature(decoded, other.public_key())
        assert err.value.reason.value == "bad_signature"


# RFC 8032, section 7.1, TEST 1, 2 and 3: (secret seed, public key, message, signature), hex.
RFC8032_SIGN = [
    (
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd2"
        "5bf5f0595bbe24655141438e7a100b",
    ),
    (
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c38"
        "7b2eaeb4302aeeb00d291612bb0c00",
    ),
    (
        "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
        "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
        "af82",
        "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc659"
        "4a7c15e9716ed28dc027beceea1ec40a",
    ),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seed, public, message, signature", RFC8032_SIGN)
def test_signer_gives_rfc8032_signatures(
    backend: str, seed: str, public: str, message: str, signature: str
) -> None:
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(seed))
    assert public_bytes(key.public_key()).hex() == public
    assert signer(key, backend=backend)(bytes.fromhex(message)).hex() == signature


def test_signers_agree_byte_for_byte_on_random_keys_and_messages() -> None:
    """Ed25519 signing is deterministic: libsodium's signature is pyca's, so the Publisher's events are
    the same bytes whichever library signs them (and verify under both)."""
    rng = random.Random(8032)
    for _ in range(200):
        key = generate_key()
        message = rng.randbytes(rng.choice([0, 1, 63, 64, 65, 600, 4096]))
        fast, slow = signer(key, backend="libsodium")(message), signer(key, backend="pyca")(message)
        assert fast == slow == key.sign(message)
        pk = public_bytes(key.public_key())
        assert all(verify_ed25519(pk, fast, message, backend=b) for b in BACKENDS)


def test_signer_refuses_an_unknown_backend() -> None:
    with pytest.raises(ValueError, match="unknown Ed25519 backend"):
        signer(generate_key(), backend="openssl3")


def test_publisher_signs_the_same_bytes_with_either_library() -> None:
    """`sign_validated` with libsodium's signer gives `sign_object`'s bytes (pyca), which decode to
    the same event id."""
    key = generate_key()
    obj = {
        "spec": "batteryledger/1",
        "kind": "batch.extracted",
        "facility_id": "AU-MINE-1",
        "time": "2026-01-01T00:00:00Z",
        "outputs": [
            {
                "batch_id": "ORE-1",
                "material": "spodumene_concentrate",
                "kg": "1000.000",
                "contained_kg": {"li": "28.500"},
                "value_usd": "1200",
            }
        ],
    }
    slow, slow_id = sign_object(dict(obj), key)
    fast, fast_id = sign_validated(dict(obj), key, None, signer(key, backend="libsodium"))
    assert (fast, fast_id) == (slow, slow_id)
    assert decode(fast).event_id == fast_id
