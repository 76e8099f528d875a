"""Signed tree heads in the C2SP formats, so outside witnesses and monitors can check our log.

- c2sp.org/tlog-checkpoint: the note text is the origin line, the decimal tree size, the base64
  root hash, then optional extension lines, each ending in a newline.
- c2sp.org/signed-note: text, a blank line, then lines "— <key name> base64(key ID || signature)".
  Ed25519 key ID = SHA-256(key name || 0x0A || 0x01 || 32-byte public key)[:4].

Parsing is strict (canonical decimals and base64, no control characters, bounded sizes) because a
checkpoint is evidence: two encodings of one tree head must never both be accepted as different.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ledger.merkle import EMPTY_ROOT, HASH_SIZE

__all__ = [
    "ALG_ED25519",
    "MAX_NOTE_SIZE",
    "MAX_SIGNATURES",
    "MAX_TREE_SIZE",
    "Checkpoint",
    "CheckpointError",
    "NoteError",
    "key_id",
    "open_note",
    "parse_vkey",
    "sign_note",
    "vkey",
]

ALG_ED25519 = 0x01
"""Signature type byte for Ed25519 (c2sp.org/signed-note, "Signature types")."""

MAX_SIGNATURES = 100
"""Signature lines accepted in one note. The spec requires at least 16 (log + witnesses); 100 is what
golang.org/x/mod/sumdb/note accepts, and more is only a way to make us do work for nothing."""

MAX_NOTE_SIZE = 1 << 20
"""Bytes accepted in one note, checked before parsing. A checkpoint is about 100 bytes and an Ed25519
signature line about 120; 1 MiB still fits MAX_SIGNATURES post-quantum signatures (~5 kB each) with
room to spare, and bounds the memory and hashing an untrusted input can cost us."""

MAX_TREE_SIZE = (1 << 64) - 1
"""Largest tree size we parse: other implementations hold it in a uint64, so a bigger one cannot be
a real checkpoint, and bounding it keeps int() off arbitrarily long digit strings."""

_SIG_PREFIX = "\u2014 "  # em dash, space
_ED25519_SIG_SIZE = 64
_KEY_ID_SIZE = 4
_DECIMAL = re.compile(r"0|[1-9][0-9]*")
_HEX_KEY_ID = re.compile(r"[0-9a-f]{8}")


class NoteError(ValueError):
    """A signed note or verifier key is malformed, from an unknown key, or its signature does not verify."""


class CheckpointError(ValueError):
    """A checkpoint body is not in the c2sp.org/tlog-checkpoint format."""


def _has_control(text: str) -> bool:
    # signed-note: no ASCII control characters (below U+0020) other than newline.
    return any(ord(c) < 0x20 and c != "\n" for c in text)


def _b64decode_canonical(text: str) -> bytes:
    """Standard padded base64, refusing any other spelling of the same bytes (RFC 4648 section 4)."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"not standard base64: {exc}") from None
    if base64.b64encode(raw).decode("ascii") != text:
        raise ValueError("non-canonical base64")
    return raw


def _check_key_name(name: str) -> None:
    # signed-note: key names MUST be non-empty and MUST NOT contain Unicode spaces or '+'.
    if not isinstance(name, str) or not name:
        raise NoteError("key name must be a non-empty string")
    if any(c.isspace() for c in name) or "+" in name or _has_control(name):
        raise NoteError(f"key name {name!r} must not contain spaces, '+' or control characters")


def key_id(name: str, public_key_bytes: bytes) -> bytes:
    """The 4-byte Ed25519 key ID: SHA-256(name || 0x0A || 0x01 || public key)[:4]."""
    _check_key_name(name)
    if len(public_key_bytes) != 32:
        raise NoteError(f"an Ed25519 public key is 32 bytes, got {len(public_key_bytes)}")
    material = name.encode("utf-8") + b"\n" + bytes([ALG_ED25519]) + bytes(public_key_bytes)
    return hashlib.sha256(material).digest()[:_KEY_ID_SIZE]


def _raw(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes_raw()


def vkey(name: str, public_key: Ed25519PublicKey) -> str:
    """Verifier key text "<name>+<8 hex key ID>+<base64(0x01 || public key)>", as witnesses configure it."""
    raw = _raw(public_key)
    material = base64.b64encode(bytes([ALG_ED25519]) + raw).decode("ascii")
    return f"{name}+{key_id(name, raw).hex()}+{material}"


def parse_vkey(text: str) -> tuple[str, Ed25519PublicKey]:
    """Parse a verifier key, checking its type is Ed25519 and its key ID matches name and key."""
    # The name has no '+', and the hex ID has none, so the first two '+' are the separators; the
    # base64 key material may itself contain '+'.
    parts = text.split("+", 2)
    if len(parts) != 3:
        raise NoteError(f"verifier key {text!r} is not <name>+<key id>+<base64 key>")
    name, hex_id, material = parts
    _check_key_name(name)
    if not _HEX_KEY_ID.fullmatch(hex_id):
        raise NoteError(f"verifier key ID {hex_id!r} is not 8 lowercase hex digits")
    try:
        raw = _b64decode_canonical(material)
    except ValueError as exc:
        raise NoteError(f"verifier key material: {exc}") from None
    if len(raw) != 33 or raw[0] != ALG_ED25519:
        raise NoteError("verifier key is not an Ed25519 key (type byte 0x01 and 32 bytes)")
    if key_id(name, raw[1:]).hex() != hex_id:
        raise NoteError(f"verifier key ID {hex_id} does not match the name and key")
    return name, Ed25519PublicKey.from_public_bytes(raw[1:])


def _check_text(text: str) -> bytes:
    """Validate note text (the signed part) and return its UTF-8 bytes."""
    if not text or not text.endswith("\n"):
        raise NoteError("note text must be non-empty and end with a newline")
    if _has_control(text):
        raise NoteError("note text must not contain control characters other than newline")
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        raise NoteError("note text is not valid UTF-8 (lone surrogate)") from None
    if len(data) > MAX_NOTE_SIZE:
        raise NoteError(f"note text is {len(data)} bytes, over the limit of {MAX_NOTE_SIZE}")
    return data


def sign_note(body: str, name: str, private_key: Ed25519PrivateKey) -> str:
    """Sign `body` as a note: body, blank line, one "— name base64(key ID || signature)" line."""
    data = _check_text(body)
    kid = key_id(name, _raw(private_key.public_key()))
    signature = base64.b64encode(kid + private_key.sign(data)).decode("ascii")
    return f"{body}\n{_SIG_PREFIX}{name} {signature}\n"


def open_note(note: str, name: str, public_key: Ed25519PublicKey) -> str:
    """Return the text of `note` once a signature by (name, public_key) verifies; raise NoteError if not.

    Signature lines from other keys (another name or key ID) are ignored, as c2sp.org/signed-note
    requires, so witnesses can cosign; but a line that claims to be from our key must verify.
    """
    kid = key_id(name, _raw(public_key))
    # 1. Bound the work before looking inside: size, then encoding and control characters.
    try:
        size = len(note.encode("utf-8"))
    except UnicodeEncodeError:
        raise NoteError("note is not valid UTF-8 (lone surrogate)") from None
    if size > MAX_NOTE_SIZE:
        raise NoteError(f"note is {size} bytes, over the limit of {MAX_NOTE_SIZE}")
    if _has_control(note):
        raise NoteError("note must not contain control characters other than newline")
    # 2. The text is separated from the signatures by the last blank line; it keeps its final newline.
    split = note.rfind("\n\n")
    if split < 0:
        raise NoteError("note has no blank line before its signatures")
    text, sig_block = note[: split + 1], note[split + 2 :]
    data = _check_text(text)
    if not sig_block or not sig_block.endswith("\n"):
        raise NoteError("note must end with at least one signature line and a newline")
    lines = sig_block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise NoteError(f"note has {len(lines)} signature lines, over the limit of {MAX_SIGNATURES}")
    # 3. Parse every line (a malformed line rejects the note), verify those from our key.
    verified = False
    for number, line in enumerate(lines, start=1):
        if not line.startswith(_SIG_PREFIX):
            raise NoteError(f"signature line {number} does not start with an em dash and a space")
        signer, sep, encoded = line[len(_SIG_PREFIX) :].partition(" ")
        if not sep:
            raise NoteError(f"signature line {number} is not '— <name> <base64 signature>'")
        _check_key_name(signer)
        try:
            blob = _b64decode_canonical(encoded)
        except ValueError as exc:
            raise NoteError(f"signature line {number}: {exc}") from None
        if len(blob) <= _KEY_ID_SIZE:
            raise NoteError(f"signature line {number} is too short to hold a key ID and a signature")
        if signer != name or blob[:_KEY_ID_SIZE] != kid:
            continue  # unknown key (another name, or another key under our name): ignore, per spec
        signature = blob[_KEY_ID_SIZE:]
        if len(signature) != _ED25519_SIG_SIZE:
            raise NoteError(
                f"signature line {number} from {name} is not a {_ED25519_SIG_SIZE}-byte Ed25519 signature"
            )
        try:
            public_key.verify(signature, data)
        except InvalidSignature:
            raise NoteError(f"signature line {number} from {name}+{kid.hex()} does not verify") from None
        verified = True
    # 4. A note no known key has signed MUST be rejected.
    if not verified:
        raise NoteError(f"note has no signature from {name}+{kid.hex()}")
    return text


def _check_line(line: str, what: str) -> None:
    if not isinstance(line, str) or not line:
        raise CheckpointError(f"{what} must be a non-empty string")
    if "\n" in line or _has_control(line):
        raise CheckpointError(f"{what} {line!r} must be one line without control characters")


@dataclass(frozen=True)
class Checkpoint:
    """A log's tree head: who (origin), how many leaves (size), and the RFC 6962 root hash."""

    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_line(self.origin, "origin")
        if (
            not isinstance(self.size, int)
            or isinstance(self.size, bool)
            or not 0 <= self.size <= MAX_TREE_SIZE
        ):
            raise CheckpointError(f"tree size must be an int in [0, 2**64), got {self.size!r}")
        if not isinstance(self.root_hash, bytes) or len(self.root_hash) != HASH_SIZE:
            raise CheckpointError(f"root hash must be {HASH_SIZE} bytes")
        if self.size == 0 and self.root_hash != EMPTY_ROOT:
            raise CheckpointError("a tree of size 0 has root SHA-256(''); this checkpoint names another")
        if not isinstance(self.extensions, tuple):
            raise CheckpointError("extensions must be a tuple of lines")
        for i, line in enumerate(self.extensions):
            _check_line(line, f"extension line {i}")

    def body(self) -> str:
        """The note text to sign: origin, size, base64 root, extension lines, each ending in newline."""
        root = base64.b64encode(self.root_hash).decode("ascii")
        return "".join(f"{line}\n" for line in (self.origin, str(self.size), root, *self.extensions))

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        """Parse a checkpoint body (the text `open_note` returns), refusing every non-canonical form."""
        if len(text) > MAX_NOTE_SIZE:
            raise CheckpointError(f"checkpoint is over {MAX_NOTE_SIZE} characters")
        if not text.endswith("\n"):
            raise CheckpointError("checkpoint must end with a newline")
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise CheckpointError(
                f"checkpoint has {len(lines)} lines; origin, size and root hash are required"
            )
        origin, size_text, root_text, *extensions = lines
        if not _DECIMAL.fullmatch(size_text) or len(size_text) > len(str(MAX_TREE_SIZE)):
            raise CheckpointError(
                f"tree size {size_text!r} is not a canonical decimal (no sign, no leading zeros)"
            )
        try:
            root = _b64decode_canonical(root_text)
        except ValueError as exc:
            raise CheckpointError(f"root hash {root_text!r}: {exc}") from None
        return cls(origin=origin, size=int(size_text), root_hash=root, extensions=tuple(extensions))
