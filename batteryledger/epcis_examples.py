"""The demo supply chain (batteryledger.sample) as EPCIS 2.0 documents: examples/epcis/.

One document per run of one facility's events, in chain order (`NN-<facility>.jsonld`), as each plant's
own system would write them: SGLN locations (GS1's example company prefix 0614141) mapped to facilities
by `locations.json`, mines commissioning their lots (ObjectEvent, action ADD), the other plants using
TransformationEvents with our bizSteps, shipments and receipts as ObjectEvents. Publishing them in order
with `batteryledger epcis publish` gives the ledger the same batches and provenance as the native chain.

Regenerate with `python -m batteryledger.epcis_examples [DIR]`; a test keeps the committed files equal to
what this writes.
"""

from __future__ import annotations

import json
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from batteryledger.sample import DemoChain, demo_chain
from schemas.epcis import PREFIX, LocationRegistry, dumps, epcis_document, to_epcis_event
from schemas.events import Kind

EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "examples" / "epcis"
UUID_NS = uuid.UUID("6f1d3c8e-5b0a-4c4e-9a57-3f0e2b1d7c11")
CREATED = datetime(2025, 6, 1, tzinfo=UTC)


def location_registry(chain: DemoChain) -> dict[str, Any]:
    """SGLN of each demo facility -> facility, country, and for mines the kind they make."""
    out: dict[str, Any] = {
        "$comment": "Location registry for examples/epcis (the operator maintains it): SGLN -> facility."
    }
    for n, fac in enumerate(sorted(chain.facilities.values(), key=lambda f: f.facility_id), start=1):
        entry: dict[str, Any] = {"facility": fac.facility_id, "country": fac.country}
        if fac.facility_id.startswith("mine-"):
            entry["kind"] = Kind.BATCH_EXTRACTED.value
        out[f"urn:epc:id:sgln:0614141.{n:05d}.0"] = entry
    return out


def _plant_style(ev: dict[str, Any], obj: dict[str, Any]) -> dict[str, Any]:
    """What a plant's system writes: mines commission lots; countries come from the location registry."""
    if obj["kind"] == Kind.BATCH_EXTRACTED.value:
        ev = {
            "type": "ObjectEvent",
            "eventTime": ev["eventTime"],
            "eventTimeZoneOffset": ev["eventTimeZoneOffset"],
            "eventID": ev["eventID"],
            "action": "ADD",
            "bizStep": "commissioning",
            "disposition": "active",
            "quantityList": ev["outputQuantityList"],
            "readPoint": ev["readPoint"],
            "bizLocation": ev["bizLocation"],
            "ilmd": ev["ilmd"],
            **{k: v for k, v in ev.items() if k == f"{PREFIX}:site"},
        }
    ev.pop(f"{PREFIX}:from_country", None)
    ev.pop(f"{PREFIX}:to_country", None)
    return ev


def demo_documents(chain: DemoChain) -> dict[str, dict[str, Any]]:
    """File name -> EPCISDocument, one per run of one facility's chain events."""
    registry = LocationRegistry.from_json(location_registry(chain))
    runs: list[tuple[str, list[dict[str, Any]]]] = []
    for n, e in enumerate(chain.chain_events):
        obj = json.loads(e.raw)
        obj.pop("sig")
        obj["note"] = "epcis:eventID=urn:uuid:" + str(uuid.uuid5(UUID_NS, f"{e.facility_id}/{n}"))
        ev = _plant_style(to_epcis_event(obj, registry), obj)
        if runs and runs[-1][0] == e.facility_id:
            runs[-1][1].append(ev)
        else:
            runs.append((e.facility_id, [ev]))
    return {
        f"{i:02d}-{fac}.jsonld": epcis_document(events, created=CREATED, extra={"sender": fac})
        for i, (fac, events) in enumerate(runs, start=1)
    }


def write(directory: Path = EXAMPLES_DIR) -> list[Path]:
    chain = demo_chain()
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    loc = directory / "locations.json"
    loc.write_text(json.dumps(location_registry(chain), indent=2) + "\n", encoding="utf-8")
    written.append(loc)
    for name, doc in demo_documents(chain).items():
        p = directory / name
        p.write_text(dumps(doc) + "\n", encoding="utf-8")
        written.append(p)
    return written


if __name__ == "__main__":
    paths = write(Path(sys.argv[1]) if len(sys.argv) > 1 else EXAMPLES_DIR)
    print(f"wrote {len(paths)} files to {paths[0].parent}")
