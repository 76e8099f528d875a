"""JSON Schema of every event kind, written to a versioned folder (schemas/jsonschema/v1).

Plant integrators validate against these without Python; a test fails when they are stale.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from schemas.events import EVENT_ADAPTER, MODEL_OF_KIND, SPEC

SCHEMA_DIR = Path(__file__).parent / "jsonschema" / "v1"
SIGNATURE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "Ed25519 over the RFC 8785 canonical bytes of the event without `sig`",
    "properties": {
        "alg": {"const": "Ed25519"},
        "key_id": {"type": "string", "pattern": "^[0-9a-f]{16}$"},
        "value": {"type": "string", "description": "base64 of the 64-byte signature"},
    },
    "required": ["alg", "key_id", "value"],
    "additionalProperties": False,
}


def schemas() -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for kind, model in MODEL_OF_KIND.items():
        schema = model.model_json_schema(mode="validation")
        schema["$id"] = f"https://batteryledger.org/schemas/v1/{kind.value}.json"
        schema["properties"]["sig"] = SIGNATURE_SCHEMA
        out[f"{kind.value}.json"] = schema
    union = EVENT_ADAPTER.json_schema(mode="validation")
    union["$id"] = "https://batteryledger.org/schemas/v1/event.json"
    union["description"] = f"Any {SPEC} event (unsigned form; the signed form adds `sig`)"
    out["event.json"] = union
    return out


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def export(directory: Path = SCHEMA_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in schemas().items():
        path = directory / name
        path.write_text(render(schema))
        written.append(path)
    return written
