"""Offline verification of an evidence bundle: check a provenance claim trusting only keys.

An auditor holds the ledger operator's public key (and learns the facilities' keys from registry
events that key signed). This module checks a bundle written by `batteryledger prove` with nothing
else: no store, no network, no Kafka. It imports only the standard library, `cryptography`,
`pydantic` (through `schemas`), `schemas.*` and the pure ledger modules `merkle`, `checkpoint`,
`registry` and `provenance`, so it can ship on its own (a test checks the import list).

Bundle format "batteryledger-bundle/2" (docs/bundle.md; JSON Schema: `bundle_schema()`): one JSON object, written by `dumps_bundle` (sorted keys,
one-space indent, ASCII only, a final newline). The file must be byte for byte that form: any
reformatting or edit is refused before anything else is looked at.

    format          "batteryledger-bundle/2" ("batteryledger-bundle/1" is read too: base64 proof hashes)
    origin          the log's origin (its checkpoints' first line and their key name)
    operator_vkey   the operator's C2SP verifier key "<origin>+<key id>+<base64 key>"
    checkpoint      a C2SP signed note (c2sp.org/tlog-checkpoint) signed by the operator key
    batch_id        the batch whose provenance is claimed
    entries         ledger entries in increasing seq: {seq, leaf_index, event_id, kind, data,
                    inclusion_proof}. `data` is the entry's stored bytes, the canonical (RFC 8785)
                    signed event, as text: the Merkle leaf is SHA-256(0x00 || UTF-8(data)).
                    `leaf_index` equals `seq` (leaf n of the tree is entry n); `inclusion_proof` is
                    the RFC 9162 path, leaf to root, as lowercase hex SHA-256 hashes.
                    Entries are (a) every transformation event the provenance rests on and (b) the
                    registry events (facility registered / attested, key rotated / revoked) of the
                    registry authority and of every facility that signed one of (a), up to the
                    checkpoint; entry 0, the authority registering the operator key, is always there.
    provenance      {parameters: {us, fta, north_america}, summary}: the summary is
                    `ledger.provenance.summarise` of the bundled events with those parameters.
    created_at      when the bundle was written (UTC, "YYYY-MM-DDTHH:MM:SSZ"). Informational: no
                    signature covers it, so it is checked for form only.

Provenance is compared for exact equality with the recomputed summary. Both sides run the same pure
function over the same nodes in the same (seq) order, and the summary is rounded (shares to 1e-9,
kg and USD to 1e-6), so a tolerance would only let small edits through: a share edited in its last
digit differs by exactly 1e-9. (Float sums can differ between Python versions by ~1e-16 relative;
that can move a rounded digit only for a value within that distance of a rounding boundary.)

What a passing bundle proves: every bundled event is in the operator's log at the signed checkpoint,
was signed by a key its facility held at the event's time with a role allowing it, and the summary
is what those events imply. What it cannot prove: absence. A bundle that leaves out a later
registry event (a key revocation, a new attestation) still passes, because an inclusion proof shows
what is in a log, never what is not. An auditor who needs that checks the registry entries against
a monitor or the full log. Leaving out an ancestor does not help a forger: the consuming event
names its inputs, so the parent shows as missing and its mass as an explicit unknown share.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ledger.checkpoint import Checkpoint, CheckpointError, NoteError, open_note, parse_vkey, vkey
from ledger.merkle import HASH_SIZE, ProofError, leaf_hash, verify_inclusion
from ledger.provenance import Provenance, compute, nodes_from_events, summarise
from ledger.registry import Registry
from schemas.events import (
    MAX_EVENT_BYTES,
    REGISTRY_FACILITY_ID,
    REGISTRY_KINDS,
    TRANSFORM_KINDS,
    Event,
    FacilityRegistered,
)
from schemas.reasons import EventError
from schemas.signing import DecodedEvent, decode, public_key_b64, verify_signature

__all__ = [
    "FORMAT",
    "FORMATS",
    "FORMAT_V1",
    "MAX_BUNDLE_BYTES",
    "MAX_COUNTRIES",
    "MAX_ENTRIES",
    "MAX_PROOF_HASHES",
    "BundleError",
    "BundleReport",
    "ProvenanceParameters",
    "bundle_schema",
    "dumps_bundle",
    "loads_bundle",
    "recompute_summary",
    "verify_bundle",
]

FORMAT = "batteryledger-bundle/2"
"""Written by `batteryledger prove`: hashes are lowercase hex, as everywhere in the API and CLI."""

FORMAT_V1 = "batteryledger-bundle/1"
"""Still read: the same format with inclusion-proof hashes in standard base64 (bundles before 2026-12)."""

FORMATS = (FORMAT, FORMAT_V1)

MAX_BUNDLE_BYTES = 128 * 1024 * 1024
"""Bytes accepted in one bundle file, checked before parsing. A pack with 10k ancestors makes a
bundle of about 30 MB (one ~1.5 kB event and a ~20-hash proof per ancestor); 4x that is room for
bigger packs while bounding what an untrusted file can make `json.loads` allocate (~10x its size)."""

MAX_ENTRIES = 100_000
"""Entries accepted in one bundle: 10x the 10k-ancestor design point. Each costs a signature check
(~65 us) and a proof check, so this bounds an auditor's run to seconds, not hours."""

MAX_PROOF_HASHES = 64
"""Hashes in one inclusion proof: a tree of up to 2**64 leaves (the checkpoint size limit) has paths of
at most 64, so a longer list cannot be a proof and is refused before any base64 is decoded."""

MAX_COUNTRIES = 300
"""Country codes in one provenance parameter list: ISO 3166-1 has 249, so more is not a country list."""

_BUNDLE_KEYS = frozenset(
    {"format", "origin", "operator_vkey", "checkpoint", "batch_id", "entries", "provenance", "created_at"}
)
_ENTRY_KEYS = frozenset({"seq", "leaf_index", "event_id", "kind", "data", "inclusion_proof"})
_PROVENANCE_KEYS = frozenset({"parameters", "summary"})
_PARAMETER_KEYS = frozenset({"us", "fta", "north_america"})
_COUNTRY = re.compile(r"[A-Z]{2}")
_EVENT_ID = re.compile(r"[0-9a-f]{64}")
_CREATED_AT = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")

STEPS = {
    1: "format and size limits",
    2: "checkpoint signature",
    3: "inclusion proofs",
    4: "event bytes",
    5: "registry",
    6: "event signatures and keys",
    7: "claimed batch",
    8: "provenance",
    9: "no unrelated events",
}


class BundleError(ValueError):
    """The bundle does not verify. `step` (see STEPS), `code`, and the entry or proof at fault."""

    def __init__(
        self, step: int, code: str, message: str, *, seq: int | None = None, event_id: str | None = None
    ) -> None:
        super().__init__(message)
        self.step = step
        self.code = code
        self.message = message
        self.seq = seq
        self.event_id = event_id

    def diagnostics(self) -> str:
        return f"bundle rejected at step {self.step} ({STEPS[self.step]}): {self.message}"


@dataclass(frozen=True, slots=True)
class ProvenanceParameters:
    """The country lists a summary's named shares use (the FTA list is a rule-pack choice)."""

    us: str = "US"
    fta: tuple[str, ...] = ()
    north_america: tuple[str, ...] = ("CA", "MX", "US")

    def to_json(self) -> dict[str, Any]:
        return {"us": self.us, "fta": sorted(set(self.fta)), "north_america": sorted(set(self.north_america))}


@dataclass(frozen=True, slots=True)
class BundleReport:
    """What a bundle that verified shows."""

    batch_id: str
    origin: str
    checkpoint: Checkpoint
    events: int  # non-registry events the provenance rests on
    registry_events: int
    proofs: int  # inclusion proofs checked (one per entry)
    signatures: int  # event signatures checked
    parameters: ProvenanceParameters
    summary: dict[str, Any]
    created_at: str


# -- serialisation -----------------------------------------------------------------------------------
def dumps_bundle(bundle: Mapping[str, Any]) -> bytes:
    """The one byte form of a bundle: sorted keys, one-space indent, ASCII, no NaN, final newline."""
    text = json.dumps(bundle, sort_keys=True, indent=1, ensure_ascii=True, allow_nan=False)
    return (text + "\n").encode("ascii")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def loads_bundle(data: bytes) -> dict[str, Any]:
    """Parse bundle bytes with the step-1 limits; the bytes must be exactly `dumps_bundle` form."""
    # 1a. Size before parsing: bound what an untrusted file can cost.
    if len(data) > MAX_BUNDLE_BYTES:
        raise BundleError(
            1, "too_large", f"bundle is {len(data):,} bytes, over the limit of {MAX_BUNDLE_BYTES:,}"
        )
    # 1b. Strict JSON: UTF-8, no duplicate keys, no NaN/Infinity.
    try:
        obj = json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except UnicodeDecodeError as exc:
        raise BundleError(1, "format", f"bundle is not UTF-8 (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise BundleError(
            1, "format", f"bundle is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except (ValueError, RecursionError) as exc:
        raise BundleError(1, "format", f"bundle is not acceptable JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise BundleError(1, "format", f"bundle must be a JSON object, got {type(obj).__name__}")
    # 1c. One spelling only: a reformatted or hand-edited file is refused outright, so every byte
    #     of an accepted file is accounted for by the checks below.
    try:
        canonical = dumps_bundle(obj)
    except ValueError as exc:
        raise BundleError(1, "format", f"bundle cannot be re-serialised: {exc}") from None
    if canonical != data:
        at = next((i for i, (a, b) in enumerate(zip(canonical, data, strict=False)) if a != b), None)
        where = f"byte {at}" if at is not None else f"length {len(data)} vs {len(canonical)}"
        raise BundleError(
            1,
            "not_canonical",
            f"bundle is not in its canonical form (first difference at {where}): it was reformatted or "
            "edited; use the file exactly as `batteryledger prove` wrote it",
        )
    return obj


# -- step 1 helpers ----------------------------------------------------------------------------------
def _exact_keys(obj: Any, keys: frozenset[str], what: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise BundleError(1, "format", f"{what} must be a JSON object, got {type(obj).__name__}")
    missing, extra = keys - obj.keys(), obj.keys() - keys
    if missing:
        raise BundleError(1, "format", f"{what} lacks {', '.join(sorted(missing))}")
    if extra:
        # Nothing unchecked may ride along in evidence: an unknown field is refused, not ignored.
        raise BundleError(1, "format", f"{what} has unknown field(s) {', '.join(sorted(extra))}")
    return obj


def _string(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise BundleError(1, "format", f"{what} must be a non-empty string")
    return value


def _int(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise BundleError(1, "format", f"{what} must be an integer >= 0, got {value!r}")
    return value


_HEX_HASH = re.compile(r"[0-9a-f]{64}")


def _hex_hash(text: Any, what: str) -> bytes:
    if not isinstance(text, str) or not _HEX_HASH.fullmatch(text):
        raise BundleError(1, "format", f"{what} must be a SHA-256 hash as 64 lowercase hex digits")
    return bytes.fromhex(text)


def _b64_hash(text: Any, what: str) -> bytes:
    if not isinstance(text, str):
        raise BundleError(1, "format", f"{what} must be a base64 string")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BundleError(1, "format", f"{what} is not standard base64") from None
    if base64.b64encode(raw).decode("ascii") != text:
        raise BundleError(1, "format", f"{what} is not canonical base64")
    if len(raw) != HASH_SIZE:
        raise BundleError(1, "format", f"{what} is {len(raw)} bytes, a SHA-256 hash is {HASH_SIZE}")
    return raw


def _countries(value: Any, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > MAX_COUNTRIES:
        raise BundleError(1, "format", f"{what} must be a list of at most {MAX_COUNTRIES} country codes")
    for c in value:
        if not isinstance(c, str) or not _COUNTRY.fullmatch(c):
            raise BundleError(1, "format", f"{what} holds {c!r}, not an ISO 3166 alpha-2 code")
    if value != sorted(set(value)):
        raise BundleError(1, "format", f"{what} must be sorted and without repeats")
    return tuple(value)


@dataclass(slots=True)
class _Entry:
    seq: int
    event_id: str  # as the bundle claims; checked against the bytes in step 4
    kind: str
    data: bytes
    proof: list[bytes]
    decoded: DecodedEvent | None = None

    def name(self) -> str:
        return f"entry seq {self.seq} (event {self.event_id[:16]}.., {self.kind})"


def _parse_entries(value: Any, fmt: str = FORMAT) -> list[_Entry]:
    if not isinstance(value, list) or not value:
        raise BundleError(1, "format", "entries must be a non-empty list")
    if len(value) > MAX_ENTRIES:
        raise BundleError(
            1, "too_large", f"bundle has {len(value):,} entries, over the limit of {MAX_ENTRIES:,}"
        )
    entries: list[_Entry] = []
    for i, raw in enumerate(value):
        e = _exact_keys(raw, _ENTRY_KEYS, f"entries[{i}]")
        seq = _int(e["seq"], f"entries[{i}].seq")
        where = f"entry seq {seq}"
        if _int(e["leaf_index"], f"{where}: leaf_index") != seq:
            raise BundleError(
                1, "format", f"{where}: leaf_index {e['leaf_index']} differs from seq (leaf n is entry n)"
            )
        if entries and seq <= entries[-1].seq:
            raise BundleError(1, "format", f"{where}: entries must be in strictly increasing seq")
        event_id = _string(e["event_id"], f"{where}: event_id")
        if not _EVENT_ID.fullmatch(event_id):
            raise BundleError(1, "format", f"{where}: event_id is not 64 lowercase hex digits")
        kind = _string(e["kind"], f"{where}: kind")
        text = _string(e["data"], f"{where}: data")
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError:
            raise BundleError(1, "format", f"{where}: data is not valid Unicode text") from None
        if len(data) > MAX_EVENT_BYTES:
            raise BundleError(
                1,
                "too_large",
                f"{where}: data is {len(data):,} bytes, over the event limit {MAX_EVENT_BYTES:,}",
            )
        proof = e["inclusion_proof"]
        if not isinstance(proof, list) or len(proof) > MAX_PROOF_HASHES:
            raise BundleError(
                1, "format", f"{where}: inclusion_proof must be a list of at most {MAX_PROOF_HASHES} hashes"
            )
        parse = _hex_hash if fmt == FORMAT else _b64_hash
        hashes = [parse(h, f"{where}: inclusion_proof[{j}]") for j, h in enumerate(proof)]
        entries.append(_Entry(seq, event_id, kind, data, hashes))
    return entries


def _parse_parameters(value: Any) -> ProvenanceParameters:
    p = _exact_keys(value, _PARAMETER_KEYS, "provenance.parameters")
    us = p["us"]
    if not isinstance(us, str) or not _COUNTRY.fullmatch(us):
        raise BundleError(1, "format", "provenance.parameters.us must be an ISO 3166 alpha-2 code")
    return ProvenanceParameters(
        us=us,
        fta=_countries(p["fta"], "provenance.parameters.fta"),
        north_america=_countries(p["north_america"], "provenance.parameters.north_america"),
    )


# -- provenance (shared with the prover) ------------------------------------------------------------
def _json_normal(value: Any) -> Any:
    """The value as it reads back from JSON (tuples become lists, keys strings)."""
    return json.loads(json.dumps(value, allow_nan=False))


def recompute_summary(
    batch_id: str,
    events: Iterable[tuple[Event, str]],
    registry: Registry,
    parameters: ProvenanceParameters,
) -> tuple[Provenance, dict[str, Any]]:
    """Provenance of `batch_id` from signed events (in seq order) and the registry they were checked
    against, and its summary as JSON data. The prover writes exactly this; the verifier recomputes it."""
    nodes = nodes_from_events(events, registry)
    p = compute(batch_id, nodes)
    summary = summarise(
        p,
        us=parameters.us,
        fta=frozenset(parameters.fta),
        north_america=frozenset(parameters.north_america),
    )
    return p, _json_normal(summary)


def _first_difference(claimed: Any, actual: Any, path: str) -> str | None:
    """Path and values of the first place two JSON values differ (types included: 1 is not 1.0)."""
    if type(claimed) is not type(actual):
        return f"{path}: bundle has {json.dumps(claimed)[:80]}, recomputed {json.dumps(actual)[:80]}"
    if isinstance(actual, dict):
        for k in sorted(set(claimed) | set(actual)):
            if k not in claimed:
                return f"{path}.{k}: missing from the bundle (recomputed {json.dumps(actual[k])[:80]})"
            if k not in actual:
                return f"{path}.{k}: in the bundle but not in the recomputed provenance"
            diff = _first_difference(claimed[k], actual[k], f"{path}.{k}")
            if diff:
                return diff
        return None
    if isinstance(actual, list):
        for i, (c, a) in enumerate(zip(claimed, actual, strict=False)):
            diff = _first_difference(c, a, f"{path}[{i}]")
            if diff:
                return diff
        if len(claimed) != len(actual):
            return f"{path}: bundle lists {len(claimed)} items, recomputed {len(actual)}"
        return None
    if claimed != actual:
        return f"{path}: bundle has {json.dumps(claimed)}, recomputed {json.dumps(actual)}"
    return None


# -- the verifier ------------------------------------------------------------------------------------
def _operator(operator_public_key: Ed25519PublicKey | str, origin: str) -> Ed25519PublicKey:
    if isinstance(operator_public_key, Ed25519PublicKey):
        return operator_public_key
    try:
        name, key = parse_vkey(operator_public_key)
    except NoteError as exc:
        raise BundleError(2, "operator_key", f"the operator verifier key given is not valid: {exc}") from None
    if name != origin:
        raise BundleError(
            2,
            "operator_key",
            f"the operator verifier key given is for origin {name!r}, the bundle is from {origin!r}",
        )
    return key


def verify_bundle(
    bundle: Mapping[str, Any] | bytes, operator_public_key: Ed25519PublicKey | str
) -> BundleReport:
    """Verify an evidence bundle offline; return what it shows or raise BundleError naming the fault.

    `bundle` is the file's bytes (then its canonical form is enforced too) or the parsed object.
    `operator_public_key` is the operator's Ed25519 public key, or its C2SP verifier key string (which
    also pins the origin).
    """
    # 1. Format and size limits: exact fields, types, bounded lengths (named constants above).
    obj = loads_bundle(bundle) if isinstance(bundle, bytes | bytearray) else bundle
    b = _exact_keys(dict(obj), _BUNDLE_KEYS, "bundle")
    if b["format"] not in FORMATS:
        raise BundleError(
            1, "format", f"format is {b['format']!r}; this verifier reads {' and '.join(map(repr, FORMATS))}"
        )
    origin = _string(b["origin"], "origin")
    batch_id = _string(b["batch_id"], "batch_id")
    note = _string(b["checkpoint"], "checkpoint")
    operator_vkey = _string(b["operator_vkey"], "operator_vkey")
    created_at = _string(b["created_at"], "created_at")
    if not _CREATED_AT.fullmatch(created_at):
        raise BundleError(1, "format", f"created_at {created_at!r} is not YYYY-MM-DDTHH:MM:SSZ")
    try:
        datetime.strptime(created_at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        raise BundleError(1, "format", f"created_at {created_at!r} is not a real time") from None
    entries = _parse_entries(b["entries"], b["format"])
    prov = _exact_keys(b["provenance"], _PROVENANCE_KEYS, "provenance")
    parameters = _parse_parameters(prov["parameters"])
    claimed = prov["summary"]
    if not isinstance(claimed, dict):
        raise BundleError(1, "format", "provenance.summary must be a JSON object")

    # 2. The checkpoint: a signed note by the operator key under the name `origin`
    #    (c2sp.org/signed-note), whose text is a tlog checkpoint for that origin (c2sp.org/tlog-checkpoint).
    key = _operator(operator_public_key, origin)
    try:
        text = open_note(note, origin, key)
    except NoteError as exc:
        raise BundleError(
            2,
            "checkpoint",
            f"the checkpoint is not signed by the operator key you gave for {origin!r} ({exc}); "
            f"the bundle names operator key {operator_vkey}",
        ) from None
    try:
        cp = Checkpoint.parse(text)
    except CheckpointError as exc:
        raise BundleError(2, "checkpoint", f"the signed checkpoint is malformed: {exc}") from None
    if cp.origin != origin:
        raise BundleError(
            2, "checkpoint", f"the checkpoint is for origin {cp.origin!r}, the bundle says {origin!r}"
        )
    if operator_vkey != vkey(origin, key):
        raise BundleError(
            2, "operator_key", f"operator_vkey {operator_vkey!r} is not the key that signed the checkpoint"
        )

    # 3. Inclusion (RFC 9162 section 2.1.3.2): each entry's leaf is SHA-256(0x00 || bytes) and its
    #    proof leads from that leaf at index seq to the signed root.
    for e in entries:
        if e.seq >= cp.size:
            raise BundleError(
                3, "inclusion", f"{e.name()} is not in the checkpoint's tree of {cp.size} entries", seq=e.seq
            )
        try:
            verify_inclusion(leaf_hash(e.data), e.seq, cp.size, e.proof, cp.root_hash)
        except ProofError as exc:
            raise BundleError(
                3,
                "inclusion",
                f"{e.name()}: its inclusion proof does not verify against checkpoint {cp.size}: {exc}",
                seq=e.seq,
                event_id=e.event_id,
            ) from None

    # 4. Each entry's bytes are one canonical signed event, whose id and kind are what the bundle says.
    for e in entries:
        try:
            d = decode(e.data)
        except EventError as exc:
            raise BundleError(4, "event", f"{e.name()}: {exc.diagnostics()}", seq=e.seq) from None
        if d.signed != e.data:
            raise BundleError(4, "event", f"{e.name()}: bytes are not the canonical form", seq=e.seq)
        if d.event_id != e.event_id or d.kind.value != e.kind:
            raise BundleError(
                4,
                "event",
                f"{e.name()}: the bytes are event {d.event_id[:16]}.. ({d.kind.value}), not what the entry says",
                seq=e.seq,
                event_id=d.event_id,
            )
        e.decoded = d
    decoded = [(e, e.decoded) for e in entries if e.decoded is not None]

    # 5. The registry, rebuilt from the bundled registry events in seq order. Entry 0 is the registry
    #    authority registering itself; the operator key IS that authority, so its key must be the one
    #    given. Every later registry event is authorised by the state before it, as the sequencer did.
    first, d0 = decoded[0]
    op_b64 = public_key_b64(key)
    if not (
        first.seq == 0
        and isinstance(d0.event, FacilityRegistered)
        and d0.facility_id == REGISTRY_FACILITY_ID
        and d0.event.subject_facility_id == REGISTRY_FACILITY_ID
        and d0.event.key.public_key == op_b64
    ):
        raise BundleError(
            5,
            "registry",
            "entry 0, the registry authority registering the operator key, is not in the bundle "
            f"(first entry is {first.name()})",
            seq=first.seq,
        )
    registry = Registry()
    n_registry = 0
    for e, d in decoded:
        if d.kind not in REGISTRY_KINDS:
            continue
        try:
            if e.seq == 0:
                verify_signature(d, key)
            registry.authorize(d)
            registry.check_registry_event(d.event)
            registry.apply(d.event, d.event_id)
        except EventError as exc:
            raise BundleError(
                5, "registry", f"{e.name()}: {exc.diagnostics()}", seq=e.seq, event_id=d.event_id
            ) from None
        n_registry += 1

    # 6. Every other event: its facility is registered, its key was valid (not revoked) at the event's
    #    time, its signature verifies over the bytes, and the facility's roles allow the kind.
    events: list[tuple[_Entry, DecodedEvent]] = [(e, d) for e, d in decoded if d.kind not in REGISTRY_KINDS]
    for e, d in events:
        try:
            registry.authorize(d)
        except EventError as exc:
            raise BundleError(
                6,
                "signature",
                f"{e.name()} by {d.facility_id}: {exc.diagnostics()}",
                seq=e.seq,
                event_id=d.event_id,
            ) from None

    # 7. The claimed batch is the output of exactly one bundled event, and no batch is made twice.
    producer: dict[str, _Entry] = {}
    for e, d in events:
        if d.kind not in TRANSFORM_KINDS:
            raise BundleError(
                7,
                "unrelated",
                f"{e.name()}: a {d.kind.value} event carries no provenance; a bundle holds transformations "
                "and registry events only",
                seq=e.seq,
                event_id=d.event_id,
            )
        for o in getattr(d.event, "outputs", ()):
            if o.batch_id in producer:
                raise BundleError(
                    7,
                    "batch",
                    f"batch {o.batch_id!r} is made by two bundled events: "
                    f"{producer[o.batch_id].name()} and {e.name()}",
                    seq=e.seq,
                    event_id=d.event_id,
                )
            producer[o.batch_id] = e
    if batch_id not in producer:
        raise BundleError(7, "batch", f"batch {batch_id!r} is not made by any event in the bundle")
    if claimed.get("batch_id") != batch_id:
        raise BundleError(
            7,
            "batch",
            f"the provenance summary is for {claimed.get('batch_id')!r}, the bundle claims {batch_id!r}",
        )

    # 8. Recompute the provenance from the bundled events alone and compare. An ancestor left out shows
    #    as a missing parent (its mass an unknown share): name it unless the summary owns up to it.
    try:
        p, actual = recompute_summary(
            batch_id, ((d.event, d.event_id) for _, d in events), registry, parameters
        )
    except (ValueError, KeyError) as exc:
        raise BundleError(8, "provenance", f"provenance cannot be computed from the bundle: {exc}") from None
    said_missing = claimed.get("missing_parents")
    said = set(said_missing) if isinstance(said_missing, list) else set()
    for parent in p.missing_parents:
        if parent not in said:
            users = [
                e.name()
                for e, d in events
                if any(i.batch_id == parent for i in getattr(d.event, "inputs", ()))
            ]
            raise BundleError(
                8,
                "missing_ancestor",
                f"ancestor batch {parent!r}, an input of {', '.join(users) or 'a bundled event'}, is not in the "
                "bundle: the event that made it was left out, yet the summary does not list it as missing",
            )
    diff = _first_difference(claimed, actual, "summary")
    if diff is not None:
        raise BundleError(8, "provenance", f"provenance does not match the bundled events: {diff}")

    # 9. Nothing unrelated rides along: every event is one the provenance rests on.
    rests_on = set(p.events)
    for e, d in events:
        if d.event_id not in rests_on:
            raise BundleError(
                9,
                "unrelated",
                f"{e.name()} is not part of the provenance of {batch_id!r}",
                seq=e.seq,
                event_id=d.event_id,
            )

    return BundleReport(
        batch_id=batch_id,
        origin=origin,
        checkpoint=cp,
        events=len(events),
        registry_events=n_registry,
        proofs=len(entries),
        signatures=len(entries),
        parameters=parameters,
        summary=actual,
        created_at=created_at,
    )


def bundle_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the bundle format, shipped as ledger/bundle.schema.json."""
    from importlib.resources import files

    schema: dict[str, Any] = json.loads(files("ledger").joinpath("bundle.schema.json").read_text("utf-8"))
    return schema
