"""Read queries for the faces (HTTP API, CLI, web page): one query per view, straight from the store.

Store code, so it lives in ledger/ (no Faust, no web framework): `batteryledger.views` shapes the rows
for people, and the API and the CLI both call these functions, never the tables themselves.

- `search_batches`: batches by facility, material, kind, country, time range and id prefix, in id
  order, a page at a time (keyset pagination: the cursor is the last id of the previous page, opaque
  to callers), with the total that matches the filters.
- `batch_events`: the custody timeline of one batch: the event that made it, shipments and receipts,
  supplier certifications, the events that consumed it, and corrections of any of those.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from ledger.store import BATCHES, EDGES, ENTRIES, chunks

MAX_PAGE = 500
DEFAULT_PAGE = 50

# kinds whose events name a batch in their fields rather than through the batches/edges tables
_MENTION_KINDS = ("batch.shipped", "batch.received", "supplier.certified")


class QueryError(ValueError):
    """A bad query parameter (the faces answer 422 / exit 2 with this message)."""


@dataclass(frozen=True, slots=True)
class BatchFilter:
    facility_id: str | None = None
    material: str | None = None
    kind: str | None = None
    country: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    prefix: str | None = None


@dataclass(frozen=True, slots=True)
class BatchPage:
    batches: list[dict[str, Any]]
    total: int
    next_cursor: str | None


def encode_cursor(batch_id: str) -> str:
    return base64.urlsafe_b64encode(batch_id.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    try:
        text = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise QueryError(f"cursor {cursor[:40]!r} is not one this server gave out") from None
    if not text:
        raise QueryError(f"cursor {cursor[:40]!r} is not one this server gave out")
    return text


def _utc_naive(t: datetime) -> datetime:
    return (t if t.tzinfo is None else t.astimezone(UTC)).replace(tzinfo=None)


def _like_prefix(prefix: str) -> str:
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def search_batches(
    engine: Engine, filt: BatchFilter, *, cursor: str | None = None, limit: int = DEFAULT_PAGE
) -> BatchPage:
    """One page of the batches that match `filt`, in batch id order, and how many match in all."""
    if not 1 <= limit <= MAX_PAGE:
        raise QueryError(f"limit={limit} is out of range: use 1 to {MAX_PAGE}")
    conds: list[Any] = []
    if filt.facility_id:
        conds.append(BATCHES.c.facility_id == filt.facility_id)
    if filt.material:
        conds.append(BATCHES.c.material == filt.material)
    if filt.kind:
        conds.append(BATCHES.c.kind == filt.kind)
    if filt.country:
        conds.append(BATCHES.c.country == filt.country.upper())
    if filt.since:
        conds.append(BATCHES.c.time >= _utc_naive(filt.since))
    if filt.until:
        conds.append(BATCHES.c.time < _utc_naive(filt.until))
    if filt.prefix:
        conds.append(BATCHES.c.batch_id.like(_like_prefix(filt.prefix), escape="\\"))
    cols = (
        BATCHES.c.batch_id,
        BATCHES.c.kind,
        BATCHES.c.material,
        BATCHES.c.facility_id,
        BATCHES.c.country,
        BATCHES.c.feoc,
        BATCHES.c.time,
        BATCHES.c.kg,
        BATCHES.c.consumed_kg,
        BATCHES.c.seq,
    )
    q = select(*cols).where(*conds).order_by(BATCHES.c.batch_id)
    if cursor:
        q = q.where(BATCHES.c.batch_id > decode_cursor(cursor))
    with engine.connect() as conn:
        total = int(conn.execute(select(func.count()).select_from(BATCHES).where(*conds)).scalar_one())
        rows = conn.execute(q.limit(limit + 1)).all()
    page = [
        {
            "batch_id": r.batch_id,
            "kind": r.kind,
            "material": r.material,
            "facility_id": r.facility_id,
            "country": r.country,
            "feoc": bool(r.feoc),
            "time": _aware(r.time),
            "kg": r.kg,
            "consumed_kg": r.consumed_kg,
            "seq": int(r.seq),
        }
        for r in rows[:limit]
    ]
    more = len(rows) > limit
    return BatchPage(page, total, encode_cursor(page[-1]["batch_id"]) if more and page else None)


def _aware(t: datetime) -> datetime:
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def _mentions(obj: dict[str, Any], batch_id: str) -> bool:
    return obj.get("batch_id") == batch_id or batch_id in (obj.get("batch_ids") or [])


def batch_events(engine: Engine, batch_id: str) -> list[dict[str, Any]]:
    """Every ledger entry that concerns `batch_id`, in ledger order, each with its parsed event.

    Raises LookupError if the batch is not in the ledger. Shipments, receipts and certifications are
    found by reading the entries of those kinds (the store keeps no index of them by batch).
    """
    with engine.connect() as conn:
        made = conn.execute(select(BATCHES.c.seq).where(BATCHES.c.batch_id == batch_id)).first()
        if made is None:
            raise LookupError(batch_id)
        seqs: dict[int, str] = {int(made.seq): "made"}
        for r in conn.execute(select(EDGES.c.seq).where(EDGES.c.parent == batch_id)):
            seqs.setdefault(int(r.seq), "consumed")
        rows: dict[int, Any] = {}
        for part in chunks(sorted(seqs)):
            for r in conn.execute(ENTRIES.select().where(ENTRIES.c.seq.in_(part))):
                rows[int(r.seq)] = r
        for r in conn.execute(
            ENTRIES.select().where(ENTRIES.c.kind.in_(_MENTION_KINDS)).order_by(ENTRIES.c.seq)
        ):
            obj = _parse(bytes(r.data))
            if _mentions(obj, batch_id):
                seqs[int(r.seq)] = {
                    "batch.shipped": "shipped",
                    "batch.received": "received",
                    "supplier.certified": "certified",
                }[r.kind]
                rows[int(r.seq)] = r
        ids = {r.event_id for r in rows.values()}
        for r in conn.execute(ENTRIES.select().where(ENTRIES.c.kind == "correction").order_by(ENTRIES.c.seq)):
            if _parse(bytes(r.data)).get("corrects") in ids:
                seqs[int(r.seq)] = "corrected"
                rows[int(r.seq)] = r
    return [_entry_view(rows[s], seqs[s]) for s in sorted(rows)]


def _parse(data: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except ValueError:
        return {}
    return obj if isinstance(obj, dict) else {}


def _entry_view(r: Any, role: str) -> dict[str, Any]:
    event = _parse(bytes(r.data))
    event.pop("sig", None)
    return {
        "seq": int(r.seq),
        "event_id": r.event_id,
        "kind": r.kind,
        "role": role,
        "facility_id": r.facility_id,
        "time": _aware(r.time),
        "appended_at": _aware(r.appended_at),
        "event": event,
    }


def batches_by_id(engine: Engine, batch_ids: Sequence[str]) -> dict[str, Any]:
    """Rows of the batches named (absent ids are left out)."""
    out: dict[str, Any] = {}
    with engine.connect() as conn:
        for part in chunks(sorted(set(batch_ids))):
            for r in conn.execute(BATCHES.select().where(BATCHES.c.batch_id.in_(part))):
                out[r.batch_id] = r
    return out


__all__ = [
    "DEFAULT_PAGE",
    "MAX_PAGE",
    "BatchFilter",
    "BatchPage",
    "QueryError",
    "batch_events",
    "batches_by_id",
    "decode_cursor",
    "encode_cursor",
    "search_batches",
]
