"""Copies of a ledger that trust nothing but the operator's public key: backups and mirrors.

A :class:`Replica` is a ledger store filled from someone else's entries (a backup file, another ledger's
HTTP API). It never copies derived tables: it appends each entry's signed bytes through the ledger's own
append path, in the original order, so every signature, key, role and business rule is checked again and
batches, edges, balances and the provenance index are recomputed here. Then it compares what it computed
with what it was told: the leaf hash and the chained entry hash of each entry, and the root of every
operator-signed checkpoint (signature checked against the origin's key; consecutive checkpoints must be
consistent, RFC 9162). Any difference is a fork (:class:`ForkError`): nothing past it is taken.

Backup format (``batteryledger backup export``), JSON lines, one object per line:

* line 1: ``{"format": "batteryledger-backup/1", "origin": ..., "operator_vkey": ..., "entries": N}``
* then one line per entry in order: ``{"seq", "data" (base64 of the signed canonical event),
  "leaf_hash", "entry_hash"}`` (hex), and after the entries every signed checkpoint note:
  ``{"checkpoint": "<C2SP signed note>"}``.

The entries carry their facilities' signatures and the checkpoints the operator's, so the file is
evidence on its own: :func:`import_backup` rebuilds a store from it with full verification.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import IO, Any

from sqlalchemy import func, select

from ledger import chain, tree
from ledger.checkpoint import Checkpoint, CheckpointError, NoteError, open_note, parse_vkey
from ledger.core import Incoming, Ledger
from ledger.merkle import ProofError, verify_consistency
from ledger.store import (
    CHECKPOINTS,
    ENTRIES,
    create_schema,
    fetch_nodes,
    get_meta,
    make_engine,
    normalise_url,
    now,
    set_meta,
)

__all__ = [
    "BACKUP_FORMAT",
    "ForkError",
    "Replica",
    "ReplicaError",
    "export_backup",
    "import_backup",
]

BACKUP_FORMAT = "batteryledger-backup/1"
#: Entries appended per store transaction when importing or mirroring.
IMPORT_BATCH = 500


class ReplicaError(Exception):
    """A copy cannot go on: the input is unreadable, the store is not empty or not this ledger's."""

    exit_code = 1


class ForkError(ReplicaError):
    """What we were given contradicts what we verified: a rewritten entry, a forked checkpoint."""

    exit_code = 3


@dataclass(frozen=True)
class RemoteEntry:
    seq: int
    data: bytes
    leaf_hash: bytes | None = None
    entry_hash: bytes | None = None


def _hex(value: Any, what: str) -> bytes:
    try:
        raw = bytes.fromhex(str(value))
    except ValueError:
        raise ReplicaError(f"{what} is not hex") from None
    if len(raw) != 32:
        raise ReplicaError(f"{what} is not 32 bytes")
    return raw


def entry_from_json(obj: Any) -> RemoteEntry:
    """One entry as the feed API and backup files carry it (``data`` base64, hashes hex)."""
    if (
        not isinstance(obj, dict)
        or not isinstance(obj.get("seq"), int)
        or not isinstance(obj.get("data"), str)
    ):
        raise ReplicaError("an entry needs an integer seq and base64 data")
    try:
        data = base64.b64decode(obj["data"], validate=True)
    except (binascii.Error, ValueError):
        raise ReplicaError(f"entry {obj['seq']}: data is not base64") from None
    return RemoteEntry(
        seq=obj["seq"],
        data=data,
        leaf_hash=_hex(obj["leaf_hash"], f"entry {obj['seq']} leaf_hash") if "leaf_hash" in obj else None,
        entry_hash=_hex(obj["entry_hash"], f"entry {obj['seq']} entry_hash") if "entry_hash" in obj else None,
    )


class Replica:
    """A store that holds a verified copy of the ledger ``origin`` signed by ``operator_vkey``.

    An empty store (no ledger yet) is set up for it; a store holding another ledger is refused.
    """

    def __init__(self, url: str, *, origin: str, operator_vkey: str) -> None:
        try:
            name, self.operator_key = parse_vkey(operator_vkey)
        except (NoteError, CheckpointError, ValueError) as exc:
            raise ReplicaError(f"the operator's verifier key is unusable: {exc}") from None
        if name != origin:
            raise ReplicaError(f"the operator key names {name!r}, not the ledger's origin {origin!r}")
        self.origin = origin
        url = normalise_url(url)
        engine = make_engine(url)
        try:
            create_schema(engine)
            with engine.begin() as conn:
                have = get_meta(conn, "origin")
                if have is None:
                    set_meta(conn, {"origin": origin, "operator_vkey": operator_vkey, "schema": "1"})
                elif have != origin or get_meta(conn, "operator_vkey") != operator_vkey:
                    raise ReplicaError(
                        f"{url} holds the ledger {have!r}, not {origin!r}: use an empty store for this copy"
                    )
        except ReplicaError:
            engine.dispose()
            raise
        except Exception as exc:
            engine.dispose()
            raise ReplicaError(f"cannot use {url} as a store: {type(exc).__name__}: {exc}") from None
        self.ledger = Ledger(url, _engine=engine)

    def close(self) -> None:
        self.ledger.close()

    def __enter__(self) -> Replica:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def size(self) -> int:
        return self.ledger.size

    def root(self, size: int) -> bytes:
        with self.ledger.engine.connect() as conn:
            return tree.root_from_nodes(size, partial(fetch_nodes, conn))

    def checkpoint_sizes(self) -> list[int]:
        with self.ledger.engine.connect() as conn:
            return [
                int(s)
                for s in conn.execute(select(CHECKPOINTS.c.size).order_by(CHECKPOINTS.c.size)).scalars()
            ]

    # -- entries -------------------------------------------------------------------------------------
    def add_entries(self, entries: Sequence[RemoteEntry]) -> int:
        """Append ``entries`` (the next ones, in order) after checking each; returns how many were added.

        All or nothing per call: one entry refused by the ledger's rules or whose hashes differ from
        ours rolls the whole call back, and the error names it.
        """
        if not entries:
            return 0
        led = self.ledger
        start = led.size
        for i, e in enumerate(entries):
            if e.seq != start + i:
                raise ReplicaError(
                    f"expected entry {start + i}, got entry {e.seq}: entries must come in order"
                )
            if e.leaf_hash is not None and chain.leaf_of(e.data) != e.leaf_hash:
                raise ForkError(
                    f"entry {e.seq}: its leaf hash does not match its bytes (the entry was altered)"
                )
        try:
            with led.engine.begin() as conn:
                results = led._append_in(conn, [Incoming(raw=e.data) for e in entries], False)
                for e, res in zip(entries, results, strict=False):
                    if res.status != "appended" or res.seq != e.seq:
                        raise ForkError(
                            f"entry {e.seq} does not pass this ledger's checks here ({res.status}: "
                            f"{res.reason} {res.detail}".rstrip()
                            + "): the source holds an entry its own rules refuse"
                        )
                rows = conn.execute(
                    select(ENTRIES.c.seq, ENTRIES.c.entry_hash)
                    .where(ENTRIES.c.seq >= start)
                    .order_by(ENTRIES.c.seq)
                ).all()
                for e, row in zip(entries, rows, strict=True):
                    if e.entry_hash is not None and bytes(row.entry_hash) != e.entry_hash:
                        raise ForkError(
                            f"entry {e.seq}: the source's chained hash {e.entry_hash.hex()[:16]}... differs "
                            f"from ours {bytes(row.entry_hash).hex()[:16]}...: an earlier entry was rewritten"
                        )
        except Exception:
            led._load()  # the transaction rolled back: rebuild size, head and registry from the store
            raise
        return len(entries)

    # -- checkpoints ---------------------------------------------------------------------------------
    def add_checkpoint(self, note: str, proof_from_previous: Sequence[bytes] | None = None) -> bool:
        """Check and keep an operator-signed checkpoint; False if it covers entries we do not have yet.

        Checked: the operator's signature for this origin; the root equals the root of the entries we
        verified; a checkpoint already held at that size is the same; ``proof_from_previous`` (RFC 9162,
        from the previous held checkpoint to this one, as the source served it) verifies.
        """
        try:
            body = open_note(note, self.origin, self.operator_key)
            cp = Checkpoint.parse(body)
        except (NoteError, CheckpointError) as exc:
            raise ForkError(f"a checkpoint does not verify with the operator's key: {exc}") from None
        if cp.origin != self.origin:
            raise ForkError(f"a checkpoint names origin {cp.origin!r}, not {self.origin!r}")
        if cp.size > self.size:
            return False
        ours = self.root(cp.size)
        if cp.root_hash != ours:
            raise ForkError(
                f"the operator signed size {cp.size} with root {cp.root_hash.hex()[:16]}..., but the entries "
                f"verified here give {ours.hex()[:16]}...: a forked checkpoint (kept out; evidence: {note!r})"
            )
        with self.ledger.engine.begin() as conn:
            held = conn.execute(select(CHECKPOINTS.c.note).where(CHECKPOINTS.c.size == cp.size)).first()
            if held is not None:
                if held.note != note:
                    other = Checkpoint.parse(open_note(held.note, self.origin, self.operator_key))
                    if other.root_hash != cp.root_hash:
                        raise ForkError(f"two different signed roots for size {cp.size}: the operator forked")
                return True
            prev = conn.execute(
                select(CHECKPOINTS.c.size, CHECKPOINTS.c.root_hash)
                .where(CHECKPOINTS.c.size < cp.size)
                .order_by(CHECKPOINTS.c.size.desc())
                .limit(1)
            ).first()
            if prev is not None and proof_from_previous is not None and int(prev.size) > 0:
                try:
                    verify_consistency(
                        int(prev.size),
                        cp.size,
                        bytes(prev.root_hash),
                        cp.root_hash,
                        list(proof_from_previous),
                    )
                except ProofError as exc:
                    raise ForkError(
                        f"the source's consistency proof from size {prev.size} to {cp.size} fails: {exc}"
                    ) from None
            conn.execute(
                CHECKPOINTS.insert().values(size=cp.size, root_hash=cp.root_hash, note=note, created_at=now())
            )
        return True


# --------------------------------------------------------------------------------------------- backup


def _entries(led: Ledger, batch: int = 1000) -> Iterator[dict[str, Any]]:
    last = -1
    while True:
        with led.engine.connect() as conn:
            rows = conn.execute(
                select(ENTRIES.c.seq, ENTRIES.c.data, ENTRIES.c.leaf_hash, ENTRIES.c.entry_hash)
                .where(ENTRIES.c.seq > last)
                .order_by(ENTRIES.c.seq)
                .limit(batch)
            ).all()
        if not rows:
            return
        for r in rows:
            yield {
                "seq": int(r.seq),
                "data": base64.b64encode(bytes(r.data)).decode(),
                "leaf_hash": bytes(r.leaf_hash).hex(),
                "entry_hash": bytes(r.entry_hash).hex(),
            }
        last = int(rows[-1].seq)


def export_backup(store: str, out: IO[str]) -> tuple[int, int]:
    """Write the ledger at ``store`` as JSON lines to ``out``; returns (entries, checkpoints) written."""
    with Ledger(store) as led:
        with led.engine.connect() as conn:
            size = int(conn.execute(select(func.count()).select_from(ENTRIES)).scalar_one())
            notes = [
                str(n)
                for n in conn.execute(select(CHECKPOINTS.c.note).order_by(CHECKPOINTS.c.size)).scalars()
            ]
        head = {
            "format": BACKUP_FORMAT,
            "origin": led.origin,
            "operator_vkey": led.operator_vkey,
            "entries": size,
        }
        out.write(json.dumps(head) + "\n")
        n = 0
        for obj in _entries(led):
            if obj["seq"] >= size:
                break  # appended while we read: the header promised `size`
            out.write(json.dumps(obj) + "\n")
            n += 1
        for note in notes:
            out.write(json.dumps({"checkpoint": note}) + "\n")
    return n, len(notes)


def _lines(source: Iterable[str]) -> Iterator[tuple[int, Any]]:
    for number, line in enumerate(source, 1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except ValueError:
            raise ReplicaError(f"line {number} is not JSON") from None


def import_backup(source: Iterable[str], store: str) -> tuple[int, int]:
    """Rebuild a ledger in the EMPTY ``store`` from a backup, verifying everything; (entries, checkpoints).

    Refuses a store that already has entries. After the import the whole store is verified again
    (``verify``: chain, Merkle nodes, signatures, checkpoints).
    """
    lines = _lines(source)
    try:
        _, head = next(lines)
    except StopIteration:
        raise ReplicaError("the backup is empty") from None
    if not isinstance(head, dict) or head.get("format") != BACKUP_FORMAT:
        raise ReplicaError(f"line 1 is not a {BACKUP_FORMAT} header")
    with Replica(store, origin=str(head.get("origin")), operator_vkey=str(head.get("operator_vkey"))) as rep:
        if rep.size:
            raise ReplicaError(f"{store} already holds {rep.size} entries: import into an empty store")
        pending: list[RemoteEntry] = []
        notes: list[str] = []
        for number, obj in lines:
            if isinstance(obj, dict) and "checkpoint" in obj:
                notes.append(str(obj["checkpoint"]))
                continue
            try:
                pending.append(entry_from_json(obj))
            except ReplicaError as exc:
                raise ReplicaError(f"line {number}: {exc}") from None
            if len(pending) >= IMPORT_BATCH:
                rep.add_entries(pending)
                pending = []
        rep.add_entries(pending)
        if rep.size != head.get("entries"):
            raise ReplicaError(
                f"the header promises {head.get('entries')} entries, the file holds {rep.size}"
            )
        for note in notes:
            if not rep.add_checkpoint(note):
                raise ForkError("a checkpoint covers more entries than the backup holds")
        from ledger.core import verify_ledger

        report = verify_ledger(rep.ledger)
        if report.errors:
            raise ForkError(f"the imported store does not verify: {report.errors[0]}")
        return rep.size, len(notes)


def read_path(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8") as fh:
        yield from fh


__all__ += ["RemoteEntry", "entry_from_json", "read_path"]
