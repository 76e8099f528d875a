"""Read models shared by the HTTP API, the web page and the CLI: one function per view.

Each view reads the store through `ledger.core.Ledger` / `ledger.queries` (one query, or a fixed few,
per view) and returns JSON-ready data; the API serialises it, the CLI prints it as a table or `--json`.
Nothing here imports FastAPI or typer, so `api.py`, `cli.py` and `cli_api.py` depend on this module and
not on each other.

Labels say what a figure is: *mined in*, *processed in*, *recycled in*, *FEOC-touched*; never a bare
country. Unknown stays unknown.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import select

from ledger.core import Ledger
from ledger.queries import batches_by_id
from ledger.store import FACILITIES
from schemas.events import ELEMENTS, STAGE_OF_KIND, Kind, Stage

US = "US"
NORTH_AMERICA = ("US", "CA", "MX")

ELEMENT_NAMES = {"li": "Lithium", "ni": "Nickel", "co": "Cobalt", "mn": "Manganese", "graphite": "Graphite"}

# Countries named on the page in full (others show their ISO 3166-1 code).
COUNTRY_NAMES = {
    "AR": "Argentina", "AU": "Australia", "BO": "Bolivia", "BR": "Brazil", "CA": "Canada",
    "CD": "DR Congo", "CL": "Chile", "CN": "China", "DE": "Germany", "FI": "Finland", "FR": "France",
    "GB": "United Kingdom", "ID": "Indonesia", "IN": "India", "JP": "Japan", "KR": "South Korea",
    "MA": "Morocco", "MG": "Madagascar", "MX": "Mexico", "MZ": "Mozambique", "NO": "Norway",
    "PE": "Peru", "PH": "Philippines", "PL": "Poland", "RU": "Russia", "SE": "Sweden", "US": "United States",
    "ZA": "South Africa", "ZM": "Zambia", "ZW": "Zimbabwe", "HU": "Hungary", "IR": "Iran", "KP": "North Korea",
}  # fmt: skip

# The page's stacked bars need a partition of each element's mass (the summary's named shares overlap:
# mass mined in Australia and refined in the US is both "FTA extracted" and "US processed"). Categories
# in display order; `_category` assigns each origin to exactly one, disqualifying facts first. The labels
# say which step happened where: "US" alone would count US refining of Australian ore as US lithium.
BREAKDOWN_CATEGORIES: tuple[tuple[str, str, str], ...] = (
    ("us", "Mined or processed in the US", "extracted in the US, or last processed (refined) in the US"),
    (
        "fta",
        "Mined or processed in an FTA country",
        "extracted or last processed in a US free-trade-agreement country (none of it in the US)",
    ),
    (
        "north_america",
        "Mined or processed elsewhere in North America",
        "extracted or last processed in Canada or Mexico, not an FTA country here",
    ),
    ("recycled_pre", "Recycled, pre-consumer", "recovered from manufacturing scrap"),
    ("recycled_post", "Recycled, post-consumer", "recovered from used batteries"),
    ("recycled", "Recycled, unspecified", "recycled feed without a pre/post-consumer declaration"),
    (
        "other",
        "Other known origin",
        "mined (and, if so, processed) outside the US, FTA countries and North America",
    ),
    ("feoc", "FEOC-touched", "a foreign entity of concern took part in some step"),
    ("unknown", "Unknown origin", "origin not shown by the ledger (missing parents, unexplained mass)"),
)


FALLBACK_FTA = ("AU", "BH", "CA", "CL", "CO", "CR", "DO", "SV", "GT", "HN", "IL", "JO", "KR", "MX", "MA", "NI",
                "OM", "PA", "PE", "SG", "JP")  # fmt: skip


def country_name(code: str | None) -> str:
    if not code:
        return "unknown"
    return f"{COUNTRY_NAMES[code]} ({code})" if code in COUNTRY_NAMES else code


def fta_countries(on: date | None = None) -> list[str]:
    """FTA countries in force on `on` (today) for the former 30D test, from the default rule pack."""
    day = on or datetime.now(UTC).date()
    try:
        from ledger.taxrules import load_pack

        pack = load_pack()
        codes = sorted(c.code for c in pack.geography.fta_countries.value if c.in_force(day))
        if codes:
            return codes
    except Exception:  # a broken pack must not take the read faces down: the shared list stands in
        pass
    return sorted(FALLBACK_FTA)


# -- provenance: bars and the origin table ------------------------------------------------------------
def _category(o: Mapping[str, Any], *, us: str, fta: frozenset[str], north_america: frozenset[str]) -> str:
    """The one bar category of a summary origin: unknown, then FEOC, recycled, US, FTA, NA, other."""
    places = {o.get("country") or "", o.get("processing_country") or ""} - {""}
    if o["source"] == "unknown":
        return "unknown"
    if o["feoc_touched"]:
        return "feoc"
    if o["source"] == "recycled":
        return {"pre": "recycled_pre", "post": "recycled_post"}.get(o.get("consumer") or "", "recycled")
    if us in places:
        return "us"
    if places & fta:
        return "fta"
    if places & north_america:
        return "north_america"
    return "other"


def origin_label(o: Mapping[str, Any]) -> str:
    """What an origin is, in words: "Mined in Australia (AU), processed in United States (US)"."""
    if o["source"] == "unknown":
        return "Unknown origin"
    if o["source"] == "recycled":
        kind = {"pre": " (pre-consumer scrap)", "post": " (post-consumer)"}.get(o.get("consumer") or "", "")
        text = f"Recycled in {country_name(o.get('country'))}{kind}"
    else:
        text = f"Mined in {country_name(o.get('country'))}"
    proc = o.get("processing_country")
    text += f", processed in {country_name(proc)}" if proc else ", not processed since"
    if o.get("feoc_touched"):
        text += "; FEOC-touched"
    return text


def provenance_breakdown(
    summary: Mapping[str, Any],
    *,
    fta: Iterable[str],
    us: str = US,
    north_america: Iterable[str] = NORTH_AMERICA,
    facilities: Mapping[str, Mapping[tuple[str, str], list[str]]] | None = None,
) -> dict[str, Any]:
    """Each element's mass by origin (the origin table) and partitioned over BREAKDOWN_CATEGORIES.

    `facilities[el][(stage, country)]` names the ancestor facilities of that stage and country that
    handled the element (see `origin_facilities`); without it the table has no facility column values.
    """
    fta_set, na_set = frozenset(fta), frozenset(north_america)
    order = [key for key, _, _ in BREAKDOWN_CATEGORIES]
    facilities = facilities or {}

    elements: dict[str, Any] = {}
    for el, data in summary["elements"].items():
        total = float(data["contained_kg"])
        kg: dict[str, float] = {}
        rows = []
        fac = facilities.get(el, {})
        for o in data["origins"]:
            c = _category(o, us=us, fta=fta_set, north_america=na_set)
            kg[c] = kg.get(c, 0.0) + float(o["kg"])
            src_stage = {"mined": "extraction", "recycled": "recycling"}.get(o["source"], "")
            rows.append(
                {
                    "source": o["source"],
                    "consumer": o.get("consumer"),
                    "mined_in": o["country"] if o["source"] == "mined" else None,
                    "recycled_in": o["country"] if o["source"] == "recycled" else None,
                    "processed_in": o.get("processing_country"),
                    "feoc_touched": bool(o["feoc_touched"]),
                    "source_facilities": list(fac.get((src_stage, o.get("country") or ""), [])),
                    "processing_facilities": list(
                        fac.get(("processing", o.get("processing_country") or ""), [])
                    ),
                    "kg": round(float(o["kg"]), 6),
                    "share": round(float(o["kg"]) / total, 9) if total else 0.0,
                    "category": c,
                    "label": origin_label(o),
                    "origin_text": origin_label(
                        {**o, "processing_country": None, "feoc_touched": False}
                    ).split(",")[0],
                    "processing_text": (
                        f"Processed in {country_name(o['processing_country'])}"
                        if o.get("processing_country")
                        else ("unknown" if o["source"] == "unknown" else "not processed since")
                    ),
                }
            )
        elements[el] = {
            "name": ELEMENT_NAMES.get(el, el),
            "contained_kg": total,
            "segments": [
                {"category": c, "kg": round(kg[c], 6), "share": round(kg[c] / total, 9) if total else 0.0}
                for c in order
                if kg.get(c, 0.0) > 0
            ],
            "origins": rows,
            "shares": dict(data["shares"]),
        }
    return {
        "batch_id": summary["batch_id"],
        "custody_model": summary["custody_model"],
        "ancestors": summary["ancestors"],
        "missing_parents": list(summary["missing_parents"]),
        "fta_countries": sorted(fta_set),
        "categories": [{"key": k, "label": lbl, "description": d} for k, lbl, d in BREAKDOWN_CATEGORIES],
        "elements": elements,
    }


def origin_facilities(led: Ledger, batch_id: str) -> dict[str, dict[tuple[str, str], list[str]]]:
    """For each element: the ancestor facilities by (stage, country) that held some of it."""
    out: dict[str, dict[tuple[str, str], set[str]]] = {}
    for n in led.ancestor_nodes(batch_id).values():
        stage = STAGE_OF_KIND[n.kind].value
        for el in ELEMENTS:
            if n.contained.get(el, 0.0) > 0 or (stage == "recycling" and n.external_feed):
                out.setdefault(el.value, {}).setdefault((stage, n.country), set()).add(n.facility_id)
    return {el: {k: sorted(v) for k, v in d.items()} for el, d in out.items()}


def provenance_view(led: Ledger, batch_id: str, fta: Iterable[str]) -> dict[str, Any]:
    """The page's provenance: bars and the per-element origin table with facilities."""
    fta = list(fta)
    summary = led.provenance(batch_id).summary(fta=fta)
    return provenance_breakdown(summary, fta=fta, facilities=origin_facilities(led, batch_id))


# -- lineage as a flow graph ----------------------------------------------------------------------------
def _fmt_kg(x: str | float) -> str:
    return f"{float(x):,.0f} kg"


def flow_graph(led: Ledger, batch_id: str, *, direction: str = "up", depth: int = 50) -> dict[str, Any]:
    """Nodes (batches, and outside recycling feeds) and mass-carrying edges, laid out left to right.

    Columns run in the direction material flows: for `up`, the farthest ancestors on the left and the
    batch on the right; for `down`, the batch on the left. Node heights grow with the square root of the
    mass (a mine lot of 100 t next to a 600 kg recovered batch both stay readable).
    """
    rows = led.lineage(batch_id, direction=direction, depth=depth)
    ids = {batch_id} | {r["parent"] for r in rows} | {r["child"] for r in rows}
    info = batches_by_id(led.engine, sorted(ids))
    nodes: dict[str, dict[str, Any]] = {}
    for bid in sorted(ids):
        b = info.get(bid)
        if b is None:
            nodes[bid] = {"id": bid, "label": bid, "kind": None, "stage": "unknown", "material": None,
                          "facility_id": None, "country": None, "feoc": False, "kg": None, "external": False,
                          "missing": True}  # fmt: skip
            continue
        nodes[bid] = {
            "id": bid,
            "label": bid,
            "kind": b.kind,
            "stage": STAGE_OF_KIND[Kind(b.kind)].value,
            "material": b.material,
            "facility_id": b.facility_id,
            "country": b.country,
            "feoc": bool(b.feoc),
            "kg": b.kg,
            "external": False,
            "missing": False,
        }
    edges = [{"source": r["parent"], "target": r["child"], "kg": r["kg"], "external": False} for r in rows]
    # outside feeds of recyclers in the graph (end-of-life packs, scrap bought in) as nodes of their own
    for bid, b in sorted(info.items()):
        extra = json.loads(b.extra or "{}")
        if "external_feed" not in extra:
            continue
        if direction == "down" and bid != batch_id:
            continue
        for i, f in enumerate(json.loads(extra["external_feed"])):
            fid = f"feed:{bid}:{i}"
            consumer = {"pre": "pre-consumer", "post": "post-consumer"}.get(f.get("consumer"), "")
            nodes[fid] = {
                "id": fid,
                "label": f.get("description") or "outside feed",
                "kind": "external_feed",
                "stage": "outside",
                "material": f"{consumer} feed".strip(),
                "facility_id": None,
                "country": f.get("origin_country"),
                "feoc": False,
                "kg": f["kg"],
                "external": True,
                "missing": False,
            }
            edges.append({"source": fid, "target": bid, "kg": f["kg"], "external": True})
    _layout(nodes, edges)
    return {
        "batch_id": batch_id,
        "direction": direction,
        "depth": depth,
        "nodes": sorted(nodes.values(), key=lambda n: (n["column"], n["y"])),
        "edges": edges,
    }


NODE_W, COL_GAP, ROW_GAP, MIN_H, MAX_H = 160, 64, 22, 22, 84


def _layout(nodes: dict[str, dict[str, Any]], edges: list[dict[str, Any]]) -> None:
    """Column = longest path from a source; heights by sqrt(kg); rows stacked in stage order."""
    preds: dict[str, list[str]] = {n: [] for n in nodes}
    for e in edges:
        preds[e["target"]].append(e["source"])
    col: dict[str, int] = {}

    def depth_of(n: str, seen: frozenset[str] = frozenset()) -> int:
        if n in col:
            return col[n]
        if n in seen:
            return 0
        col[n] = 1 + max((depth_of(p, seen | {n}) for p in preds[n]), default=-1)
        return col[n]

    for nid in nodes:
        depth_of(nid)
    masses = [float(n["kg"]) for n in nodes.values() if n["kg"] is not None]
    top = max(masses, default=1.0) or 1.0
    stage_rank = {s.value: i for i, s in enumerate(Stage)}
    y_next: dict[int, float] = {}
    for nid in sorted(nodes, key=lambda i: (col[i], stage_rank.get(nodes[i]["stage"], -1), i)):
        node = nodes[nid]
        c = col[nid]
        h = MIN_H if node["kg"] is None else MIN_H + (MAX_H - MIN_H) * (float(node["kg"]) / top) ** 0.5
        y = y_next.get(c, 0.0)
        node.update(column=c, x=c * (NODE_W + COL_GAP), y=round(y, 1), w=NODE_W, h=round(h, 1))
        y_next[c] = y + h + ROW_GAP
    width = (max(col.values(), default=0) + 1) * (NODE_W + COL_GAP) - COL_GAP
    height = max(y_next.values(), default=0.0)
    for node in nodes.values():
        node["canvas"] = [width, round(height, 1)]


def _dot_id(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def flow_graph_dot(graph: Mapping[str, Any]) -> str:
    """The flow graph in Graphviz DOT (`dot -Tsvg`): FEOC steps red, outside feeds dashed."""
    lines = [
        f"digraph {_dot_id('lineage of ' + graph['batch_id'])} {{",
        "  rankdir=LR;",
        "  node [shape=box];",
    ]
    for n in graph["nodes"]:
        parts = [n["label"]]
        if n["material"]:
            parts.append(n["material"])
        if n["facility_id"]:
            parts.append(f"{n['facility_id']} ({n['country']})")
        elif n["country"]:
            parts.append(f"from {n['country']}")
        if n["kg"] is not None:
            parts.append(_fmt_kg(n["kg"]))
        if n["feoc"]:
            parts.append("FEOC")
        attrs = [f"label={_dot_id(chr(10).join(parts))}"]
        if n["feoc"]:
            attrs.append('color="red"')
        if n["external"]:
            attrs.append('style="dashed"')
        if n["missing"]:
            attrs.append('style="dotted"')
        lines.append(f"  {_dot_id(n['id'])} [{', '.join(attrs)}];")
    for e in graph["edges"]:
        style = ', style="dashed"' if e["external"] else ""
        lines.append(
            f"  {_dot_id(e['source'])} -> {_dot_id(e['target'])} [label={_dot_id(_fmt_kg(e['kg']))}{style}];"
        )
    lines.append("}")
    return "\n".join(lines) + "\n"


# -- the battery passport ---------------------------------------------------------------------------
PASSPORT_KINDS = {Kind.CELLS_PRODUCED.value, Kind.MODULES_ASSEMBLED.value, Kind.PACKS_ASSEMBLED.value}
RECYCLED_MATERIALS = (("co", "Cobalt"), ("li", "Lithium"), ("ni", "Nickel"))


class NotAPassportBatch(ValueError):
    pass


def _field(value: Any, entries: Iterable[int], unit: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"value": value, "entries": sorted(set(entries))}
    if unit:
        out["unit"] = unit
    return out


def passport(
    led: Ledger, batch_id: str, *, fta: Iterable[str], permalink: str | None = None
) -> dict[str, Any]:
    """EU 2023/1542 Annex XIII fields the ledger can derive, in Battery Pass (v1.2) field names.

    Each field is `{"value", "unit"?, "entries"}`: `entries` are the ledger entries it rests on.
    Raises LookupError (no such batch) or NotAPassportBatch (not a cell, module or pack).
    """
    b = led.batch(batch_id)
    if b is None:
        raise LookupError(batch_id)
    if b.kind.value not in PASSPORT_KINDS:
        raise NotAPassportBatch(
            f"{batch_id} is {b.material} ({STAGE_OF_KIND[b.kind].value} stage): a battery passport is for "
            "cells, modules and packs"
        )
    made = led.entry_data([b.event_id])
    event = json.loads(made[b.event_id][1]) if b.event_id in made else {}
    out: dict[str, Any] = next((o for o in event.get("outputs", []) if o.get("batch_id") == batch_id), {})
    fac = led.registry.facilities.get(b.facility_id)
    with led.engine.connect() as conn:
        reg_seq = conn.execute(
            select(FACILITIES.c.seq).where(FACILITIES.c.facility_id == b.facility_id)
        ).scalar()
    at = [b.seq]
    reg = [b.seq] + ([int(reg_seq)] if reg_seq is not None else [])
    units = out.get("units")
    nodes = led.ancestor_nodes(batch_id)
    seq_of = {ev: s for ev, (s, _) in led.entry_data([n.event_id for n in nodes.values()]).items()}
    cathodes = sorted(
        (n for n in nodes.values() if n.kind == Kind.MATERIAL_PRODUCED and "cathode" in n.material),
        key=lambda n: n.batch_id,
    )
    recyclers = [n for n in nodes.values() if STAGE_OF_KIND[n.kind] == Stage.RECYCLING]
    fta = list(fta)
    summary = led.provenance(batch_id).summary(fta=fta)
    prov_entries = [seq_of[n.event_id] for n in recyclers if n.event_id in seq_of] + [b.seq]
    recycled = []
    for el, name in RECYCLED_MATERIALS:
        shares = summary["elements"].get(el, {}).get("shares")
        recycled.append(
            {
                "recycledMaterial": name,
                "preConsumerShare": _field(
                    None if shares is None else round(shares["recycled_pre_consumer"] * 100, 3),
                    prov_entries,
                    "%",
                ),
                "postConsumerShare": _field(
                    None if shares is None else round(shares["recycled_post_consumer"] * 100, 3),
                    prov_entries,
                    "%",
                ),
            }
        )
    recycled.append(
        {
            "recycledMaterial": "Lead",
            "preConsumerShare": _field(None, [], "%"),
            "postConsumerShare": _field(None, [], "%"),
            "note": "lead is not tracked by this ledger",
        }
    )
    origins = []
    for el, data in summary["elements"].items():
        for o in data["origins"]:
            origins.append(
                {
                    "material": ELEMENT_NAMES.get(el, el),
                    "origin": origin_label(o),
                    "mass": round(o["kg"], 3),
                    "share": round(o["kg"] / data["contained_kg"] * 100, 3) if data["contained_kg"] else 0.0,
                }
            )
    per_unit = float(b.kg) / units if units else None
    return {
        "batteryPassportIdentifier": f"urn:batteryledger:{led.origin}:{batch_id}",
        "permalink": permalink,
        "dataModel": "Battery Pass data model v1.2 field names (EU 2023/1542 Annex XIII); values from the ledger",
        "generalProductInformation": {
            "batteryIdentifier": _field(batch_id, at),
            "productType": _field(b.material, at),
            "manufacturerIdentification": _field(
                {"facilityId": b.facility_id, "legalEntity": fac.legal_entity if fac else None}, reg
            ),
            "manufacturingPlace": _field({"country": b.country, "facilityId": b.facility_id}, reg),
            "manufacturingDate": _field(b.time.date().isoformat(), at),
            "batteryMass": _field(None if per_unit is None else round(per_unit, 3), at, "kg"),
            "lotMass": _field(str(b.kg), at, "kg"),
            "units": _field(units, at),
        },
        "materialComposition": {
            "batteryChemistry": _field(
                ", ".join(sorted({n.material.replace("_cathode_active_material", "") for n in cathodes}))
                or None,
                [seq_of[n.event_id] for n in cathodes if n.event_id in seq_of],
            ),
            "criticalRawMaterials": _field(
                [
                    {"material": ELEMENT_NAMES[el.value], "mass": str(v)}
                    for el, v in b.contained.items()
                    if v > 0
                ],
                at,
                "kg",
            ),
            "materialOrigins": _field(
                origins, [seq_of[e] for e in (n.event_id for n in nodes.values()) if e in seq_of]
            ),
        },
        "performance": {
            "ratedEnergy": _field(out.get("kwh"), at, "kWh"),
            "originalPowerCapability": _field(out.get("max_discharge_kw"), at, "kW"),
        },
        "circularity": {"recycledContent": recycled},
        "notDerivable": [
            "carbon footprint",
            "due diligence report",
            "hazardous substances",
            "rated capacity (Ah) and cycle life",
            "dismantling information",
        ],
        "entries": sorted(seq_of.values()),
        "time": b.time.isoformat() if isinstance(b.time, datetime) else str(b.time),
    }


__all__ = [
    "BREAKDOWN_CATEGORIES",
    "NotAPassportBatch",
    "country_name",
    "flow_graph",
    "flow_graph_dot",
    "fta_countries",
    "origin_label",
    "passport",
    "provenance_breakdown",
    "provenance_view",
]
