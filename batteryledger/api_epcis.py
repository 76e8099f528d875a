"""`GET /v1/batches/{id}/epcis`: a batch's lineage as a GS1 EPCIS 2.0 document (JSON-LD).

An APIRouter mounted by batteryledger.api before the catch-all batch route (a batch id may contain '/').
It reads the ledger through the app's shared reader (`app.state.reader.ledger`); the location registry
comes from $BATTERYLEDGER_EPCIS_LOCATIONS when set (facilities without a location become
urn:batteryledger:facility:<id>).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import JSONResponse, Response

from batteryledger.epcis_io import export_lineage, read_registry
from schemas.epcis import EpcisError, dumps
from schemas.events import is_identifier

EPCIS_MEDIA_TYPE = "application/ld+json"
PROBLEM_JSON = "application/problem+json"
MAX_DEPTH = 1000

router = APIRouter(tags=["batches"])


def _problem(status: int, title: str, detail: str) -> JSONResponse:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON)


@router.get(
    "/v1/batches/{batch_id:path}/epcis",
    response_class=Response,
    responses={
        200: {
            "description": "An EPCISDocument (GS1 EPCIS 2.0 JSON-LD) of the lineage's events; each event "
            "carries bl:event_id, bl:entry and bl:inclusion_proof to check it against the ledger.",
            "content": {EPCIS_MEDIA_TYPE: {}},
        },
        400: {"description": "Bad batch id or parameter."},
        404: {"description": "Batch not in the ledger."},
    },
)
def batch_epcis(
    request: Request,
    batch_id: Annotated[str, Path(description="Batch id (may contain '/', ':' and '.').")],
    direction: Annotated[
        str, Query(pattern="^(up|down)$", description="up: ancestors; down: descendants.")
    ] = "up",
    depth: Annotated[int, Query(ge=1, le=MAX_DEPTH, description="Hops.")] = 50,
) -> Response:
    """The batch's lineage (the events that made, shipped, received or corrected it) as EPCIS 2.0."""
    if not is_identifier(batch_id):
        return _problem(400, "Bad Request", f"{batch_id[:128]!r} is not a batch id")
    led: Any = request.app.state.reader.ledger
    if led.batch(batch_id) is None:
        return _problem(404, "Not Found", f"batch {batch_id!r} is not in the ledger")
    try:
        registry = read_registry(None)
    except EpcisError as exc:
        return _problem(500, "Internal Server Error", exc.diagnostics())
    base = str(request.base_url).rstrip("/")
    doc = export_lineage(led, batch_id, direction=direction, depth=depth, registry=registry, base_url=base)
    return Response(dumps(doc, indent=None), media_type=EPCIS_MEDIA_TYPE)


__all__ = ["router"]
