"""Proofs served from a ledger store: inclusion and consistency proofs, checkpoints, evidence bundles.

This is the prover's side; `ledger.bundle_verify` is the auditor's, and imports nothing from here.
Proofs are read from the stored perfect-subtree nodes (`ledger.tree`), so each costs O(log n) rows
whatever the ledger's size; a bundle's proofs are fetched together, one query per tree level.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from ledger import tree
from ledger.bundle_verify import (
    FORMAT,
    BundleError,
    ProvenanceParameters,
    dumps_bundle,
    recompute_summary,
    verify_bundle,
)
from ledger.checkpoint import Checkpoint, CheckpointError, NoteError, open_note
from ledger.core import Ledger
from ledger.merkle import ProofError
from ledger.registry import Registry
from ledger.store import BATCHES, CHECKPOINTS, ENTRIES, chunks, fetch_nodes
from schemas.events import REGISTRY_FACILITY_ID, REGISTRY_KINDS, TRANSFORM_KINDS
from schemas.reasons import EventError
from schemas.signing import DecodedEvent, decode

__all__ = [
    "CheckpointRow",
    "ProofsError",
    "checkpoint_at_or_after",
    "consistency_proof",
    "default_parameters",
    "inclusion_proof",
    "inclusion_proofs",
    "latest_checkpoint_row",
    "make_bundle",
]

_PLACEHOLDER = bytes(32)  # stands in for node hashes while only the keys a proof needs are collected


class ProofsError(Exception):
    """A proof or bundle cannot be made from this store; the message says why and what to do."""

    def diagnostics(self) -> str:
        return str(self)


@dataclass(frozen=True, slots=True)
class CheckpointRow:
    size: int
    root_hash: bytes
    note: str


def _store_size(conn: Connection) -> int:
    # From the store, not Ledger.size: a reader's Ledger object does not see later appends.
    last = conn.execute(select(func.max(ENTRIES.c.seq))).scalar()
    return 0 if last is None else int(last) + 1


def _get(conn: Connection) -> tree.GetNodes:
    return lambda keys: fetch_nodes(conn, keys)


def _tree_size(conn: Connection, size: int, what: str) -> None:
    have = _store_size(conn)
    if size > have:
        raise ProofsError(f"{what}: tree size {size} is larger than the ledger ({have} entries)")


def inclusion_proof(led: Ledger, seq: int, size: int) -> list[bytes]:
    """RFC 9162 inclusion proof of entry `seq` in the tree of the first `size` entries."""
    return inclusion_proofs(led, [seq], size)[seq]


def inclusion_proofs(led: Ledger, seqs: Iterable[int], size: int) -> dict[int, list[bytes]]:
    """Inclusion proofs of many entries in one tree, with every node they need fetched at once."""
    wanted = sorted(set(seqs))
    for s in wanted:
        if not 0 <= s < size:
            raise ProofsError(f"entry {s} is not in a tree of size {size}")
    keys: set[tree.NodeKey] = set()

    def record(ks: Iterable[tree.NodeKey]) -> dict[tree.NodeKey, bytes]:
        got = list(ks)
        keys.update(got)
        return dict.fromkeys(got, _PLACEHOLDER)

    # Pass 1 collects the node keys of every proof (placeholders hashed, results discarded);
    # pass 2 builds the proofs from the nodes fetched in between.
    for s in wanted:
        tree.inclusion_proof_from_nodes(s, size, record)
    with led.engine.connect() as conn:
        _tree_size(conn, size, "inclusion proof")
        found = fetch_nodes(conn, keys)
    try:
        return {s: tree.inclusion_proof_from_nodes(s, size, lambda ks: _pick(found, ks)) for s in wanted}
    except tree.MissingNodeError as exc:
        raise ProofsError(f"the store is missing Merkle nodes ({exc}); run `batteryledger verify`") from None


def _pick(found: Mapping[tree.NodeKey, bytes], keys: Iterable[tree.NodeKey]) -> dict[tree.NodeKey, bytes]:
    return {k: found[k] for k in keys if k in found}


def consistency_proof(led: Ledger, old_size: int, new_size: int) -> list[bytes]:
    """RFC 9162 consistency proof that the tree of `new_size` entries extends the one of `old_size`."""
    try:
        with led.engine.connect() as conn:
            _tree_size(conn, new_size, "consistency proof")
            return tree.consistency_proof_from_nodes(old_size, new_size, _get(conn))
    except ProofError as exc:
        raise ProofsError(f"no consistency proof from size {old_size} to {new_size}: {exc}") from None
    except tree.MissingNodeError as exc:
        raise ProofsError(f"the store is missing Merkle nodes ({exc}); run `batteryledger verify`") from None


def _row(r: Any) -> CheckpointRow:
    return CheckpointRow(int(r.size), bytes(r.root_hash), str(r.note))


def latest_checkpoint_row(led: Ledger) -> CheckpointRow | None:
    """The newest stored checkpoint (largest size), or None if none was signed yet."""
    with led.engine.connect() as conn:
        r = conn.execute(select(CHECKPOINTS).order_by(CHECKPOINTS.c.size.desc()).limit(1)).first()
    return None if r is None else _row(r)


def checkpoint_at_or_after(led: Ledger, size: int) -> CheckpointRow | None:
    """The smallest stored checkpoint covering at least `size` entries, or None."""
    with led.engine.connect() as conn:
        r = conn.execute(
            select(CHECKPOINTS).where(CHECKPOINTS.c.size >= size).order_by(CHECKPOINTS.c.size).limit(1)
        ).first()
    return None if r is None else _row(r)


def default_parameters() -> ProvenanceParameters:
    """The country lists of the shipped rule pack: the same shares `batteryledger provenance` shows."""
    from ledger.taxrules.pack import load_pack

    fta = tuple(sorted({c.code for c in load_pack(None).geography.fta_countries.value}))
    return ProvenanceParameters(us="US", fta=fta, north_america=("CA", "MX", "US"))


# -- evidence bundles -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Stored:
    seq: int
    data: bytes  # exactly as stored: the Merkle leaf is over these bytes
    decoded: DecodedEvent


def _decode_stored(seq: int, data: bytes) -> DecodedEvent:
    try:
        return decode(data)
    except EventError as exc:
        raise ProofsError(
            f"stored entry {seq} does not decode ({exc.detail}): the store was edited; run `batteryledger verify`"
        ) from None


def _provenance_events(led: Ledger, batch_id: str) -> dict[str, _Stored]:
    """The transformation events `batch_id`'s provenance rests on, closed over their inputs.

    Starts from the store's ancestor index (Provenance.events), then follows the events' own inputs,
    so a stale or damaged index cannot make a bundle that silently lacks an ancestor.
    """
    wanted = set(led.provenance(batch_id).events)
    out: dict[str, _Stored] = {}
    while wanted:
        rows = led.entry_data(wanted)
        lost = sorted(wanted - rows.keys())
        if lost:
            raise ProofsError(f"event {lost[0]} of the provenance index is not in the ledger's entries")
        for eid, (seq, data) in rows.items():
            out[eid] = _Stored(seq, data, _decode_stored(seq, data))
        made = {o.batch_id for s in out.values() for o in getattr(s.decoded.event, "outputs", ())}
        needed = {i.batch_id for s in out.values() for i in getattr(s.decoded.event, "inputs", ())} - made
        wanted = set()
        with led.engine.connect() as conn:
            for part in chunks(sorted(needed)):
                for r in conn.execute(select(BATCHES.c.event_id).where(BATCHES.c.batch_id.in_(part))):
                    if r.event_id not in out:
                        wanted.add(str(r.event_id))
    return out


def _registry_entries(led: Ledger, size: int, facilities: set[str]) -> list[_Stored]:
    """Registry events below `size` about the authority or `facilities`, plus entry 0, in seq order."""
    subjects = facilities | {REGISTRY_FACILITY_ID}
    out: list[_Stored] = []
    with led.engine.connect() as conn:
        rows = conn.execute(
            select(ENTRIES.c.seq, ENTRIES.c.data)
            .where(ENTRIES.c.kind.in_([k.value for k in REGISTRY_KINDS]))
            .where(ENTRIES.c.seq < size)
            .order_by(ENTRIES.c.seq)
        ).all()
    for r in rows:
        seq, data = int(r.seq), bytes(r.data)
        d = _decode_stored(seq, data)
        if seq == 0 or getattr(d.event, "subject_facility_id", None) in subjects:
            out.append(_Stored(seq, data, d))
    return out


def _choose_checkpoint(led: Ledger, needed: int, checkpoint_note: str | None) -> tuple[Checkpoint, str]:
    """A signed checkpoint covering the first `needed` entries, verified under the ledger's key."""
    if checkpoint_note is None:
        row = latest_checkpoint_row(led)
        if row is None or row.size < needed:
            have = "no checkpoint" if row is None else f"the latest checkpoint covers {row.size} entries"
            if led.operator_key is None:
                raise ProofsError(
                    f"the bundle needs a checkpoint covering {needed} entries and {have}: sign one with "
                    "`batteryledger checkpoint --sign --operator-key FILE`, or give prove --operator-key FILE"
                )
            led.make_checkpoint()
            row = latest_checkpoint_row(led)
            if row is None or row.size < needed:
                raise ProofsError(
                    f"signed a checkpoint, yet none covers {needed} entries: is the store shared?"
                )
        checkpoint_note = row.note
    try:
        cp = Checkpoint.parse(open_note(checkpoint_note, led.origin, led.operator_public_key))
    except (NoteError, CheckpointError) as exc:
        raise ProofsError(f"the checkpoint does not verify under this ledger's operator key: {exc}") from None
    if cp.origin != led.origin:
        raise ProofsError(f"the checkpoint is for origin {cp.origin!r}, this ledger is {led.origin!r}")
    if cp.size < needed:
        raise ProofsError(f"the checkpoint covers {cp.size} entries; the bundle needs {needed}")
    try:
        with led.engine.connect() as conn:
            _tree_size(conn, cp.size, "checkpoint")
            root = tree.root_from_nodes(cp.size, _get(conn))
    except tree.MissingNodeError as exc:
        raise ProofsError(f"the store is missing Merkle nodes ({exc}); run `batteryledger verify`") from None
    if root != cp.root_hash:
        raise ProofsError(
            f"checkpoint {cp.size} names root {cp.root_hash.hex()[:16]}.., this store's tree has "
            f"{root.hex()[:16]}..: it is not a checkpoint of this ledger's history"
        )
    return cp, checkpoint_note


def make_bundle(
    led: Ledger,
    batch_id: str,
    *,
    checkpoint_note: str | None = None,
    parameters: ProvenanceParameters | None = None,
    check: bool = True,
    created_at: datetime | None = None,
) -> dict[str, Any]:
    """An evidence bundle for `batch_id` (format: see ledger.bundle_verify), as JSON-ready data.

    Uses `checkpoint_note` if given, else the latest checkpoint, signing a new one when that does not
    cover the events and the ledger was opened with the operator key. With `check` (the default) the
    bundle is verified as an auditor would before it is returned, so a bundle that would fail (say, an
    event whose key was since revoked as of before its time) is reported here, not at the auditor's.
    """
    params = parameters or default_parameters()
    # 1. The events the provenance rests on, and who signed them.
    events = _provenance_events(led, batch_id)
    ordered = sorted(events.values(), key=lambda s: s.seq)
    facilities = {s.decoded.facility_id for s in ordered}
    # 2. A signed checkpoint that covers them.
    cp, note = _choose_checkpoint(led, ordered[-1].seq + 1, checkpoint_note)
    # 3. The registry events of those facilities and of the authority, up to the checkpoint.
    registry_entries = _registry_entries(led, cp.size, facilities)
    registry = Registry()
    for s in registry_entries:
        registry.apply(s.decoded.event, s.decoded.event_id)
    # 4. The provenance as the auditor will recompute it: from these events and this registry.
    transforms = [(s.decoded.event, s.decoded.event_id) for s in ordered if s.decoded.kind in TRANSFORM_KINDS]
    _, summary = recompute_summary(batch_id, transforms, registry, params)
    # 5. One inclusion proof per entry against that checkpoint.
    entries = sorted([*registry_entries, *ordered], key=lambda s: s.seq)
    proofs = inclusion_proofs(led, [s.seq for s in entries], cp.size)
    bundle: dict[str, Any] = {
        "format": FORMAT,
        "origin": led.origin,
        "operator_vkey": led.operator_vkey,
        "checkpoint": note,
        "batch_id": batch_id,
        "entries": [_entry_json(s, proofs[s.seq]) for s in entries],
        "provenance": {"parameters": params.to_json(), "summary": summary},
        "created_at": (created_at or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if check:
        try:
            verify_bundle(dumps_bundle(bundle), led.operator_public_key)
        except BundleError as exc:
            raise ProofsError(f"the bundle for {batch_id!r} would not verify: {exc.diagnostics()}") from None
    return bundle


def _entry_json(s: _Stored, proof: Sequence[bytes]) -> dict[str, Any]:
    try:
        text = s.data.decode("utf-8")
    except UnicodeDecodeError:
        raise ProofsError(f"stored entry {s.seq} is not UTF-8: run `batteryledger verify`") from None
    return {
        "seq": s.seq,
        "leaf_index": s.seq,
        "event_id": s.decoded.event_id,
        "kind": s.decoded.kind.value,
        "data": text,
        "inclusion_proof": [h.hex() for h in proof],
    }
