"""The read-only feed a mirror or a backup pulls: entries in order, every signed checkpoint, the origin.

Mounted on the HTTP API with one line (``app.include_router(feed_router(store_url))`` in api.py):

* ``GET /v1/origin``: the ledger's origin line and the operator's verifier key (C2SP vkey). A mirror
  should be given the key out of band (``--operator-vkey``); this is for comparison and first contact.
* ``GET /v1/entries?after=SEQ&limit=N``: up to N entries with seq > SEQ (default: from entry 0), each
  ``{seq, data (base64 of the signed canonical event), leaf_hash, entry_hash}`` (hex), and the size.
* ``GET /v1/checkpoints?after=SIZE&limit=N``: the operator's signed checkpoints (C2SP signed notes) for
  tree sizes above SIZE, in size order.

Consistency proofs between two checkpoints are the API's ``/v1/proofs/consistency``. Everything here
is public data (signed events, signed tree heads): the same role as checkpoints and proofs.
"""

from __future__ import annotations

import base64
import threading
from typing import Annotated, Any

from fastapi import APIRouter, Query
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from ledger.store import CHECKPOINTS, ENTRIES, META, make_engine, normalise_url

__all__ = ["DEFAULT_FEED_LIMIT", "MAX_FEED_LIMIT", "feed_router"]

#: Entries per page: 1,000 entries of ~1 KiB are about 1.4 MB of JSON, one round trip per ~1 MB.
DEFAULT_FEED_LIMIT = 1_000
#: A page never exceeds this: bounds the memory one request can make the server spend.
MAX_FEED_LIMIT = 5_000


def feed_router(store_url: str) -> APIRouter:
    """Routes over the ledger at ``store_url``; the store is opened at the first request."""
    router = APIRouter(prefix="/v1", tags=["feed"])
    lock = threading.Lock()
    engines: list[Engine] = []

    def engine() -> Engine:
        with lock:
            if not engines:
                engines.append(make_engine(normalise_url(store_url)))
            return engines[0]

    @router.get("/origin")
    def origin() -> dict[str, Any]:
        """The ledger's origin and the operator's verifier key (C2SP vkey)."""
        with engine().connect() as conn:
            meta = {r.key: r.value for r in conn.execute(select(META.c.key, META.c.value))}
        return {"origin": meta.get("origin"), "operator_vkey": meta.get("operator_vkey")}

    @router.get("/entries")
    def entries(
        after: Annotated[
            int, Query(ge=-1, description="Entries with seq above this (-1: from entry 0).")
        ] = -1,
        limit: Annotated[int, Query(ge=1, le=MAX_FEED_LIMIT)] = DEFAULT_FEED_LIMIT,
    ) -> dict[str, Any]:
        """Entries in order, as signed bytes and the hashes that chain them: what a mirror re-verifies."""
        with engine().connect() as conn:
            rows = conn.execute(
                select(ENTRIES.c.seq, ENTRIES.c.data, ENTRIES.c.leaf_hash, ENTRIES.c.entry_hash)
                .where(ENTRIES.c.seq > after)
                .order_by(ENTRIES.c.seq)
                .limit(limit)
            ).all()
            last = conn.execute(select(func.max(ENTRIES.c.seq))).scalar()
        return {
            "size": 0 if last is None else int(last) + 1,
            "entries": [
                {
                    "seq": int(r.seq),
                    "data": base64.b64encode(bytes(r.data)).decode(),
                    "leaf_hash": bytes(r.leaf_hash).hex(),
                    "entry_hash": bytes(r.entry_hash).hex(),
                }
                for r in rows
            ],
        }

    @router.get("/checkpoints")
    def checkpoints(
        after: Annotated[int, Query(ge=-1, description="Checkpoints of tree sizes above this.")] = -1,
        limit: Annotated[int, Query(ge=1, le=MAX_FEED_LIMIT)] = DEFAULT_FEED_LIMIT,
    ) -> dict[str, Any]:
        """Every signed checkpoint above ``after``, in size order (C2SP signed notes, byte for byte)."""
        with engine().connect() as conn:
            rows = conn.execute(
                select(CHECKPOINTS.c.size, CHECKPOINTS.c.note)
                .where(CHECKPOINTS.c.size > after)
                .order_by(CHECKPOINTS.c.size)
                .limit(limit)
            ).all()
        return {"checkpoints": [{"size": int(r.size), "note": str(r.note)} for r in rows]}

    return router
