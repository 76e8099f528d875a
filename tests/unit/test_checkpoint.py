"""C2SP signed notes and tlog checkpoints, against published vectors and deliberately broken notes."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger.checkpoint import (
    MAX_NOTE_SIZE,
    MAX_SIGNATURES,
    Checkpoint,
    CheckpointError,
    NoteError,
    key_id,
    open_note,
    parse_vkey,
    sign_note,
    vkey,
)
from ledger.merkle import EMPTY_ROOT, leaf_hash, root_hash

# The current C2SP signed-note.md (stored copy at commit 0552876) shows a note signed by
# "quasimodo.example/salvatore" but publishes no verifier key for it, so it cannot be verified. We
# therefore verify against golang.org/x/mod sumdb/note/note_test.go (TestSign / TestOpen), the
# reference implementation the spec was written from: the PeterNeumann keys, text and signatures.
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_ENOCH_VKEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
GO_TEXT = (
    "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
)
GO_PETER_SIG = "— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
GO_ENOCH_SIG = "— EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ=\n"
GO_NOTE = GO_TEXT + "\n" + GO_PETER_SIG

# The example of an earlier C2SP signed-note.md revision (d4c16da5, section "Example"), as quoted
# verbatim by independent implementations' tests; checked here as a second, independent vector.
SPEC_OLD_VKEY = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k"
SPEC_OLD_NOTE = (
    "This is an example message.\n\n"
    "— example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n"
)

# The current spec's own example (c2sp.org/signed-note): its text contains a blank line.
SPEC_NOTE = (
    "Ognuno sta solo sul cuor della terra\ntrafitto da un raggio di sole:\n\ned è subito sera.\n\n"
    "— quasimodo.example/salvatore "
    "NnugSzTjtVAewIS+Z/iJhUPeFDkO/5QQ2i5ddnGITLlC+EhfLW9oJKONrMouFSQU0xMcXxj99ihAQwaqP3ZekRwNtIc=\n"
)

# c2sp.org/tlog-checkpoint example body.
SOFA_BODY = "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"


def go_private_key() -> Ed25519PrivateKey:
    # The Go signer key is PRIVATE+KEY+<name>+<id>+base64(0x01 || 32-byte seed); the base64 holds '+'.
    raw = base64.b64decode(GO_SKEY.split("+", 4)[4])
    assert raw[0] == 0x01 and len(raw) == 33
    return Ed25519PrivateKey.from_private_bytes(raw[1:])


# --- published vectors -----------------------------------------------------------------------------


def test_go_note_verifies_with_go_key() -> None:
    name, public_key = parse_vkey(GO_VKEY)
    assert name == "PeterNeumann"
    assert open_note(GO_NOTE, name, public_key) == GO_TEXT


def test_signing_reproduces_the_go_note_byte_for_byte() -> None:
    # Ed25519 is deterministic (RFC 8032), so our encoder must match Go's exactly.
    assert sign_note(GO_TEXT, "PeterNeumann", go_private_key()) == GO_NOTE


def test_key_id_and_vkey_match_go() -> None:
    public_key = go_private_key().public_key()
    assert key_id("PeterNeumann", public_key.public_bytes_raw()) == bytes.fromhex("c74f20a3")
    assert vkey("PeterNeumann", public_key) == GO_VKEY


def test_earlier_spec_example_verifies() -> None:
    name, public_key = parse_vkey(SPEC_OLD_VKEY)
    assert open_note(SPEC_OLD_NOTE, name, public_key) == "This is an example message.\n"


def test_current_spec_example_is_well_formed_but_unverifiable_without_its_key() -> None:
    # Its text keeps the inner blank line (the last blank line separates the signatures); with no
    # published key, the note must be refused for lacking a known signature, not as malformed.
    name, public_key = parse_vkey(GO_VKEY)
    with pytest.raises(NoteError, match="no signature from PeterNeumann"):
        open_note(SPEC_NOTE, name, public_key)


def test_checkpoint_spec_example_round_trips() -> None:
    cp = Checkpoint.parse(SOFA_BODY)
    assert cp.origin == "example.com/behind-the-sofa"
    assert cp.size == 20852163
    assert cp.root_hash == base64.b64decode("CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=")
    assert cp.extensions == ()
    assert cp.body() == SOFA_BODY


# --- round trip ------------------------------------------------------------------------------------

LOG_NAME = "batteryledger.example/log/eu-1"


@pytest.fixture(scope="module")
def log_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes(range(32)))


def sample_checkpoint(extensions: tuple[str, ...] = ()) -> Checkpoint:
    leaves = [leaf_hash(str(i).encode()) for i in range(11)]
    return Checkpoint(LOG_NAME, 11, root_hash(leaves), extensions)


@pytest.mark.parametrize("extensions", [(), ("Timestamp: 1700000000",), ("a", "b c — d")])
def test_checkpoint_sign_open_parse_round_trip(
    log_key: Ed25519PrivateKey, extensions: tuple[str, ...]
) -> None:
    cp = sample_checkpoint(extensions)
    note = sign_note(cp.body(), LOG_NAME, log_key)
    assert note.startswith(cp.body() + "\n— " + LOG_NAME + " ")
    body = open_note(note, LOG_NAME, log_key.public_key())
    assert Checkpoint.parse(body) == cp


def test_vkey_round_trip(log_key: Ed25519PrivateKey) -> None:
    text = vkey(LOG_NAME, log_key.public_key())
    name, public_key = parse_vkey(text)
    assert name == LOG_NAME
    assert public_key.public_bytes_raw() == log_key.public_key().public_bytes_raw()


def test_empty_tree_checkpoint() -> None:
    cp = Checkpoint("o", 0, EMPTY_ROOT)
    assert cp.body() == "o\n0\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n"
    assert Checkpoint.parse(cp.body()) == cp


# --- tampering -------------------------------------------------------------------------------------


@pytest.mark.parametrize("mask", [0x01, 0x02, 0x20])
def test_any_byte_changed_fails(log_key: Ed25519PrivateKey, mask: int) -> None:
    note = sign_note(sample_checkpoint(("ext — ü",)).body(), LOG_NAME, log_key)
    public_key = log_key.public_key()
    raw = note.encode("utf-8")
    checked = 0
    for i in range(len(raw)):
        changed = bytearray(raw)
        changed[i] ^= mask
        try:
            text = changed.decode("utf-8")
        except UnicodeDecodeError:
            continue  # not a string at all; nothing reaches open_note
        checked += 1
        with pytest.raises(NoteError):
            open_note(text, LOG_NAME, public_key)
            pytest.fail(f"byte {i} ^ {mask:#x} accepted")
    assert checked > len(raw) // 2


def test_wrong_key_name_fails(log_key: Ed25519PrivateKey) -> None:
    note = sign_note(sample_checkpoint().body(), LOG_NAME, log_key)
    with pytest.raises(NoteError, match="no signature from"):
        open_note(note, LOG_NAME + "x", log_key.public_key())
    # The same name with another key: the key ID differs, so the line is not ours either.
    other = Ed25519PrivateKey.from_private_bytes(b"\x07" * 32)
    with pytest.raises(NoteError, match="no signature from"):
        open_note(note, LOG_NAME, other.public_key())


def test_unknown_key_line_is_ignored_but_a_known_signature_is_required() -> None:
    name, peter = parse_vkey(GO_VKEY)
    # Go's TestOpen: Peter's and Enoch's signatures; only Peter's key is known.
    assert open_note(GO_TEXT + "\n" + GO_PETER_SIG + GO_ENOCH_SIG, name, peter) == GO_TEXT
    assert open_note(GO_TEXT + "\n" + GO_ENOCH_SIG + GO_PETER_SIG, name, peter) == GO_TEXT
    with pytest.raises(NoteError, match="no signature from PeterNeumann"):
        open_note(GO_TEXT + "\n" + GO_ENOCH_SIG, name, peter)
    enoch_name, enoch = parse_vkey(GO_ENOCH_VKEY)
    assert open_note(GO_TEXT + "\n" + GO_PETER_SIG + GO_ENOCH_SIG, enoch_name, enoch) == GO_TEXT


def test_witness_cosignature_is_ignored(log_key: Ed25519PrivateKey) -> None:
    body = sample_checkpoint().body()
    witness = Ed25519PrivateKey.from_private_bytes(b"\x09" * 32)
    cosigned = (
        sign_note(body, LOG_NAME, log_key) + sign_note(body, "witness.example/w1", witness).split("\n\n")[-1]
    )
    assert open_note(cosigned, LOG_NAME, log_key.public_key()) == body
    assert open_note(cosigned, "witness.example/w1", witness.public_key()) == body


def test_bad_signature_from_known_key_rejects_the_whole_note() -> None:
    name, peter = parse_vkey(GO_VKEY)
    blob = bytearray(base64.b64decode(GO_PETER_SIG.split()[2]))
    blob[-1] ^= 1  # the key ID is intact, so this line is ours and must verify
    bad = f"— PeterNeumann {base64.b64encode(blob).decode()}\n"
    with pytest.raises(NoteError, match="does not verify"):
        open_note(GO_TEXT + "\n" + GO_PETER_SIG + bad, name, peter)
    short = f"— PeterNeumann {base64.b64encode(blob[:-1]).decode()}\n"
    with pytest.raises(NoteError, match="64-byte"):
        open_note(GO_TEXT + "\n" + short, name, peter)


@pytest.mark.parametrize(
    "note",
    [
        # The malformed notes of Go's TestOpen.
        GO_TEXT,
        GO_TEXT + "\n",
        GO_TEXT + "\n" + GO_PETER_SIG[:-1],
        "\x01" + GO_TEXT + "\n" + GO_PETER_SIG,
        GO_TEXT
        + "\n"
        + "— Bad Name x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=",
        GO_TEXT + "\n" + GO_PETER_SIG + "Unexpected line.\n",
        # And ours.
        GO_TEXT + "\n" + GO_PETER_SIG.replace("—", "-"),
        GO_TEXT + "\n" + GO_PETER_SIG.replace("=\n", "\n"),  # unpadded base64
        GO_TEXT + "\n" + GO_PETER_SIG.replace(" x08", "  x08"),
        GO_TEXT + "\n" + GO_PETER_SIG + "\n",
        GO_TEXT.replace("\n", "\r\n", 1) + "\n" + GO_PETER_SIG,
        GO_TEXT + "\n" + "— PeterNeumann AAAA\n",
        GO_TEXT + "\ud800\n\n" + GO_PETER_SIG,
        "\n" + GO_PETER_SIG,
    ],
)
def test_malformed_notes_are_rejected(note: str) -> None:
    name, peter = parse_vkey(GO_VKEY)
    with pytest.raises(NoteError):
        open_note(note, name, peter)


# --- limits ----------------------------------------------------------------------------------------


def test_signature_line_limit() -> None:
    name, peter = parse_vkey(GO_VKEY)
    assert open_note(GO_TEXT + "\n" + GO_PETER_SIG * MAX_SIGNATURES, name, peter) == GO_TEXT
    with pytest.raises(NoteError, match="signature lines, over the limit"):
        open_note(GO_TEXT + "\n" + GO_PETER_SIG * (MAX_SIGNATURES + 1), name, peter)


def test_note_size_limit(log_key: Ed25519PrivateKey) -> None:
    big = "x" * (MAX_NOTE_SIZE - 200) + "\n"
    assert open_note(sign_note(big, LOG_NAME, log_key), LOG_NAME, log_key.public_key()) == big
    with pytest.raises(NoteError, match="over the limit"):
        open_note(sign_note(big, LOG_NAME, log_key) + "x" * 200, LOG_NAME, log_key.public_key())
    with pytest.raises(NoteError, match="over the limit"):
        sign_note("x" * MAX_NOTE_SIZE + "\n", LOG_NAME, log_key)


# --- names, keys, bodies ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["", "a b", "a+b", "a\tb", "a\u00a0b", "a\u2003b", "a\nb"])
def test_bad_key_names_are_refused(log_key: Ed25519PrivateKey, name: str) -> None:
    with pytest.raises(NoteError, match="key name"):
        sign_note("text\n", name, log_key)
    with pytest.raises(NoteError, match="key name"):
        vkey(name, log_key.public_key())


@pytest.mark.parametrize("body", ["", "no newline", "a\x00b\n", "\ud800\n"])
def test_bad_note_text_is_refused(log_key: Ed25519PrivateKey, body: str) -> None:
    with pytest.raises(NoteError, match="note text"):
        sign_note(body, LOG_NAME, log_key)


def test_every_mangled_go_vkey_is_refused() -> None:
    # Go's TestNewVerifier: every proper substring and every single-character increment must fail.
    for i in range(len(GO_VKEY) + 1):
        for j in range(i + 1, len(GO_VKEY) + 1):
            if (i, j) != (0, len(GO_VKEY)):
                with pytest.raises(NoteError):
                    parse_vkey(GO_VKEY[i:j])
    for i in range(len(GO_VKEY)):
        with pytest.raises(NoteError):
            parse_vkey(GO_VKEY[:i] + chr(ord(GO_VKEY[i]) + 1) + GO_VKEY[i + 1 :])
    with pytest.raises(NoteError, match="not an Ed25519 key"):
        parse_vkey("PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW")
    with pytest.raises(NoteError, match="8 lowercase hex"):
        parse_vkey(GO_VKEY.replace("c74f20a3", "C74F20A3"))


ROOT_B64 = base64.b64encode(bytes(range(32))).decode()


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (f"o\n01\n{ROOT_B64}\n", "canonical decimal"),
        (f"o\n+1\n{ROOT_B64}\n", "canonical decimal"),
        (f"o\n-1\n{ROOT_B64}\n", "canonical decimal"),
        (f"o\n 1\n{ROOT_B64}\n", "canonical decimal"),
        (f"o\n1 \n{ROOT_B64}\n", "canonical decimal"),
        (f"o\n1_000\n{ROOT_B64}\n", "canonical decimal"),
        (f"o\n\u0661\n{ROOT_B64}\n", "canonical decimal"),
        (f"o\n0x10\n{ROOT_B64}\n", "canonical decimal"),
        (f"o\n\n{ROOT_B64}\n", "canonical decimal"),
        (f"o\n{2**64}\n{ROOT_B64}\n", r"tree size must be an int in \[0, 2\*\*64\)"),
        (f"o\n{'9' * 5000}\n{ROOT_B64}\n", "canonical decimal"),
        (f"o\n5\n{base64.b64encode(bytes(31)).decode()}\n", "root hash must be 32 bytes"),
        (f"o\n5\n{base64.b64encode(bytes(33)).decode()}\n", "root hash must be 32 bytes"),
        (f"o\n5\n{ROOT_B64.rstrip('=')}\n", "base64"),
        (f"o\n5\n{ROOT_B64[:-2]}F=\n", "non-canonical base64"),
        (f"o\n5\n{ROOT_B64.replace('A', '-')}\n", "base64"),
        (f"o\n5\n{ROOT_B64}", "end with a newline"),
        (f"o\n5\n{ROOT_B64}\n\n", "extension line 0 must be a non-empty"),
        (f"o\n5\n{ROOT_B64}\next\n\n", "extension line 1 must be a non-empty"),
        ("o\n5\n", "lines"),
        (f"\n5\n{ROOT_B64}\n", "origin must be a non-empty"),
        (f"o\r\n5\n{ROOT_B64}\n", "control characters"),
        (f"o\n5\n{ROOT_B64}\nbad\tline\n", "control characters"),
        (f"o\n0\n{ROOT_B64}\n", "size 0"),
    ],
)
def test_checkpoint_parse_is_strict(body: str, why: str) -> None:
    with pytest.raises(CheckpointError, match=why):
        Checkpoint.parse(body)


def test_checkpoint_constructor_is_strict() -> None:
    root = bytes(32)
    with pytest.raises(CheckpointError, match="root hash"):
        Checkpoint("o", 1, bytes(31))
    with pytest.raises(CheckpointError, match="tree size"):
        Checkpoint("o", -1, root)
    with pytest.raises(CheckpointError, match="tree size"):
        Checkpoint("o", True, root)
    with pytest.raises(CheckpointError, match="one line"):
        Checkpoint("o\nx", 1, root)
    with pytest.raises(CheckpointError, match="one line"):
        Checkpoint("o", 1, root, ("a\nb",))
    with pytest.raises(CheckpointError, match="tuple"):
        Checkpoint("o", 1, root, ["a"])  # type: ignore[arg-type]
