"""Domestic-content provenance: a pure function over the batch graph.

Model: mass balance (ISO 22095:2020). Each batch's contained mass of each tracked element is split over
*origins*: (how it entered the chain, where, pre/post-consumer for recycled feed, the country of the
last processing step, whether a foreign entity of concern touched any step). An output's split is the
mass-weighted mix of what its event consumed; with one input this is identity preserved. Mass whose
origin the graph cannot show (a parent missing from the graph, or more mass out than in within the
ledger's tolerance) is an explicit `unknown` origin, never silently dropped.

Value is propagated the same way, in USD, keyed by the step that added it (extraction, processing,
material, cell, module, pack, recycling), its country and FEOC flag: the input of value-added tests.

Arithmetic is binary floating point for speed (10k-ancestor graphs in tens of milliseconds); results are
rounded to micrograms / micro-dollars on output, far below any threshold's resolution.

The store feeds `compute` with `BatchNode`s read from its tables; the offline verifier builds the same
nodes from the signed events of an evidence bundle (`nodes_from_events`) and must get the same answer.
"""

from __future__ import annotations

import json
import json.encoder
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol

from ledger.registry import Registry
from schemas.events import (
    ELEMENT_FIELD,
    ELEMENTS,
    STAGE_OF_KIND,
    TRANSFORM_KINDS,
    BatchRecycled,
    Element,
    Event,
    Kind,
    Stage,
)

Origin = tuple[str, str, str, str, bool]
"""(source, country, consumer, processing_country, feoc_touched); source in mined|recycled|unknown."""

ValueKey = tuple[str, str, bool, bool]
"""(stage that added the value or "unknown", country, feoc, prohibited foreign entity)."""

UNKNOWN: Origin = ("unknown", "", "", "", False)
UNKNOWN_VALUE: ValueKey = ("unknown", "", False, False)
_EPS = 1e-12


@dataclass(frozen=True, slots=True)
class FeedInfo:
    consumer: str  # "pre" | "post"
    kg: float
    contained: Mapping[Element, float]
    country: str


@dataclass(frozen=True, slots=True)
class BatchNode:
    batch_id: str
    event_id: str
    kind: Kind
    facility_id: str
    country: str
    feoc: bool
    time: datetime
    kg: float
    contained: Mapping[Element, float]
    value_usd: float | None
    inputs: tuple[tuple[str, float], ...]  # (parent batch id, kg consumed by the producing event)
    event_produced: Mapping[Element, float]  # contained mass over all outputs of the producing event
    event_value_out: float | None  # value over all outputs of the producing event (None if any is unknown)
    feed_consumer: str | None = None
    external_feed: tuple[FeedInfo, ...] = ()
    material: str = ""
    pfe: bool = False  # attested prohibited foreign entity at the time (45X material assistance)


@dataclass(slots=True)
class ElementSplit:
    contained_kg: float
    origins: dict[Origin, float] = field(default_factory=dict)  # kg by origin


@dataclass(slots=True)
class Provenance:
    batch_id: str
    elements: dict[Element, ElementSplit]
    value_usd: float | None
    value_origins: dict[ValueKey, float]
    ancestors: int
    events: list[str]  # event ids the result rests on (the batch's and all its ancestors')
    missing_parents: list[str]
    custody_model: str = "mass_balance"

    def summary(
        self, *, us: str = "US", fta: Iterable[str] = (), north_america: Iterable[str] = ("US", "CA", "MX")
    ) -> dict[str, Any]:
        return summarise(self, us=us, fta=frozenset(fta), north_america=frozenset(north_america))


def _mix_into(target: dict[Any, float], source: Mapping[Any, float], factor: float) -> None:
    for k, v in source.items():
        target[k] = target.get(k, 0.0) + v * factor


def post_order(nodes: Mapping[str, BatchNode], target: str) -> tuple[list[str], set[str]]:
    """Ancestors of `target` (itself last), parents before children; and parents absent from `nodes`.

    Iterative, so a 10k-deep chain needs no recursion limit.
    """
    order: list[str] = []
    seen: set[str] = set()
    missing: set[str] = set()
    stack: list[tuple[str, bool]] = [(target, False)]
    while stack:
        bid, expanded = stack.pop()
        if expanded:
            order.append(bid)
            continue
        if bid in seen:
            continue
        seen.add(bid)
        stack.append((bid, True))
        for parent, _kg in nodes[bid].inputs:
            if parent in nodes:
                if parent not in seen:
                    stack.append((parent, False))
            else:
                missing.add(parent)
    return order, missing


def compute(batch_id: str, nodes: Mapping[str, BatchNode]) -> Provenance:
    """Provenance of `batch_id` from the nodes given (its ancestors; absent parents become unknown)."""
    if batch_id not in nodes:
        raise KeyError(batch_id)
    order, missing = post_order(nodes, batch_id)
    mass: dict[str, dict[Element, dict[Origin, float]]] = {}
    value: dict[str, dict[ValueKey, float]] = {}
    for bid in order:
        n = nodes[bid]
        mass[bid] = node_mass(n, nodes, mass)
        value[bid] = node_value(n, nodes, value)
    target = nodes[batch_id]
    elements = {el: ElementSplit(target.contained.get(el, 0.0), dict(mass[batch_id][el])) for el in ELEMENTS}
    events = sorted({nodes[b].event_id for b in order})
    return Provenance(
        batch_id=batch_id,
        elements=elements,
        value_usd=target.value_usd,
        value_origins=dict(value[batch_id]),
        ancestors=len(order) - 1,
        events=events,
        missing_parents=sorted(missing),
    )


class ParentFacts(Protocol):
    """What `node_mass` and `node_value` read of a parent node (a BatchNode has them; so does the
    append path's lighter record of a parent batch)."""

    @property
    def kg(self) -> float: ...

    @property
    def value_usd(self) -> float | None: ...


def node_mass(
    n: BatchNode,
    nodes: Mapping[str, ParentFacts],
    mass: Mapping[str, Mapping[Element, Mapping[Origin, float]]],
) -> dict[Element, dict[Origin, float]]:
    """One batch's origins from its parents' (the step both `compute` and the append path take)."""
    out: dict[Element, dict[Origin, float]] = {}
    stage = STAGE_OF_KIND.get(n.kind)
    for el in ELEMENTS:
        own = n.contained.get(el, 0.0)
        if own <= 0:
            out[el] = {}
            continue
        if stage == Stage.EXTRACTION:
            out[el] = {("mined", n.country, "", "", n.feoc): own}
            continue
        # what the producing event consumed, by origin
        supplied: dict[Origin, float] = {}
        missing_kg = 0.0
        for parent, kg in sorted(n.inputs):
            p = nodes.get(parent)
            if p is None or parent not in mass:
                missing_kg += kg
                continue
            if p.kg <= 0:
                continue
            _mix_into(supplied, mass[parent][el], kg / p.kg)
        # a parent missing from the graph supplied an unknown share: its share of the input mass
        input_kg = sum(kg for _, kg in n.inputs) + sum(f.kg for f in n.external_feed)
        unknown_fraction = missing_kg / input_kg if input_kg > 0 else 0.0
        for feed in n.external_feed:
            c = feed.contained.get(el, 0.0)
            if c > 0:
                key: Origin = ("recycled", n.country, feed.consumer, "", n.feoc)
                supplied[key] = supplied.get(key, 0.0) + c
        if stage == Stage.RECYCLING:
            consumer = n.feed_consumer or "post"
            recycled: dict[Origin, float] = {}
            for k, v in supplied.items():
                new = (
                    k
                    if k[0] == "recycled" and k[1] == n.country and k[3] == ""
                    else ("recycled", n.country, consumer if k[0] != "recycled" else k[2], "", n.feoc)
                )
                recycled[new] = recycled.get(new, 0.0) + v
            supplied = recycled
        elif stage == Stage.PROCESSING:
            supplied = _relabel(supplied, processing=n.country, feoc=n.feoc)
        elif n.feoc:
            supplied = _relabel(supplied, processing=None, feoc=True)
        total_supplied = sum(supplied.values())
        produced = max(n.event_produced.get(el, own), own)
        out[el] = {}
        if total_supplied <= _EPS:
            out[el] = {UNKNOWN: own}
            continue
        known_fraction = min(1.0, total_supplied / produced) * (1.0 - unknown_fraction)
        scale = own * known_fraction / total_supplied
        _mix_into(out[el], supplied, scale)
        if known_fraction < 1.0:
            out[el][UNKNOWN] = out[el].get(UNKNOWN, 0.0) + own * (1.0 - known_fraction)
        out[el] = {k: v for k, v in out[el].items() if v > _EPS}
    return out


def _relabel(split: Mapping[Origin, float], *, processing: str | None, feoc: bool) -> dict[Origin, float]:
    out: dict[Origin, float] = {}
    for (src, country, consumer, proc, touched), v in split.items():
        if src == "unknown":
            key = UNKNOWN
        else:
            key = (src, country, consumer, processing if processing is not None else proc, touched or feoc)
        out[key] = out.get(key, 0.0) + v
    return out


def node_value(
    n: BatchNode, nodes: Mapping[str, ParentFacts], value: Mapping[str, Mapping[ValueKey, float]]
) -> dict[ValueKey, float]:
    """One batch's value origins (USD by the step that added it) from its parents'."""
    stage = STAGE_OF_KIND.get(n.kind, Stage.PROCESSING).value
    if n.value_usd is None:
        return {}
    if (not n.inputs and not n.external_feed) or STAGE_OF_KIND.get(n.kind) == Stage.RECYCLING:
        # a new beginning: recovered material's value is the recycler's, not that of the products it was
        return {(stage, n.country, n.feoc, n.pfe): n.value_usd}
    consumed: dict[ValueKey, float] = {}
    unknown_input = bool(n.external_feed)  # bought-in feed carries no ledger value
    for parent, kg in sorted(n.inputs):
        p = nodes.get(parent)
        if p is None or p.value_usd is None or p.kg <= 0 or parent not in value:
            unknown_input = True  # what this input was worth is not in the graph
            continue
        _mix_into(consumed, value[parent], kg / p.kg)
    total_out = n.event_value_out if n.event_value_out is not None else n.value_usd
    share = n.value_usd / total_out if total_out > 0 else 0.0
    total_in = sum(consumed.values())
    result: dict[ValueKey, float] = {}
    if total_in > total_out > 0:
        _mix_into(result, consumed, n.value_usd / total_in)  # value lost in the step: scale down
    else:
        _mix_into(result, consumed, share)
        added = (total_out - total_in) * share
        if added > 0:
            # with an input of unknown value, the step's own value added cannot be told apart from it
            key = UNKNOWN_VALUE if unknown_input else (stage, n.country, n.feoc, n.pfe)
            result[key] = result.get(key, 0.0) + added
    return {k: v for k, v in result.items() if v > _EPS}


def extraction_origins(
    contained: Mapping[Element, float], country: str, feoc: bool, pfe: bool, value_usd: float | None
) -> tuple[dict[Element, dict[Origin, float]], dict[ValueKey, float]]:
    """`node_mass` and `node_value` of an extraction batch (no inputs, no external feed), without a node:
    the append path's commonest case. The same dicts, value for value (tests compare)."""
    key: Origin = ("mined", country, "", "", feoc)
    mass: dict[Element, dict[Origin, float]] = {}
    for el in ELEMENTS:
        own = contained.get(el, 0.0)
        mass[el] = {key: own} if own > 0 else {}
    value = {} if value_usd is None else {(Stage.EXTRACTION.value, country, feoc, pfe): value_usd}
    return mass, value


def summarise(
    p: Provenance, *, us: str, fta: frozenset[str], north_america: frozenset[str]
) -> dict[str, Any]:
    """Named shares per element (fractions of contained mass) and value splits, as JSON-ready data."""
    elements: dict[str, Any] = {}
    for el, split in p.elements.items():
        total = split.contained_kg
        if total <= 0:
            continue

        def share(pred: Any, origins: Mapping[Origin, float] = split.origins, total: float = total) -> float:
            return round(sum(v for k, v in origins.items() if pred(k)) / total, 9)

        by_extraction: dict[str, float] = {}
        by_processing: dict[str, float] = {}
        for (src, country, _consumer, proc, _f), v in split.origins.items():
            if src == "mined":
                by_extraction[country] = by_extraction.get(country, 0.0) + v
            if proc:
                by_processing[proc] = by_processing.get(proc, 0.0) + v
        elements[el.value] = {
            "contained_kg": round(total, 6),
            "shares": {
                "us_extracted": share(lambda k: k[0] == "mined" and k[1] == us),
                "us_processed": share(lambda k: k[3] == us),
                "us_recycled": share(lambda k: k[0] == "recycled" and k[1] == us),
                "fta_or_us_extracted": share(lambda k: k[0] == "mined" and (k[1] == us or k[1] in fta)),
                "fta_or_us_processed": share(lambda k: k[3] != "" and (k[3] == us or k[3] in fta)),
                "north_america_extracted": share(lambda k: k[0] == "mined" and k[1] in north_america),
                "north_america_processed": share(lambda k: k[3] in north_america),
                "recycled": share(lambda k: k[0] == "recycled"),
                "recycled_pre_consumer": share(lambda k: k[0] == "recycled" and k[2] == "pre"),
                "recycled_post_consumer": share(lambda k: k[0] == "recycled" and k[2] == "post"),
                "recycled_north_america": share(lambda k: k[0] == "recycled" and k[1] in north_america),
                "qualifying_30d": share(
                    lambda k: (
                        (k[0] == "mined" and (k[1] == us or k[1] in fta))
                        or (k[3] != "" and (k[3] == us or k[3] in fta))
                        or (k[0] == "recycled" and k[1] in north_america)
                    )
                ),
                "feoc_touched": share(lambda k: k[4]),
                "unknown": share(lambda k: k[0] == "unknown"),
            },
            "kg_by_extraction_country": {c: round(v, 6) for c, v in sorted(by_extraction.items())},
            "kg_by_processing_country": {c: round(v, 6) for c, v in sorted(by_processing.items())},
            "origins": [
                {
                    "source": k[0],
                    "country": k[1],
                    "consumer": k[2] or None,
                    "processing_country": k[3] or None,
                    "feoc_touched": k[4],
                    "kg": round(v, 6),
                }
                for k, v in sorted(split.origins.items(), key=lambda kv: (-kv[1], kv[0]))
            ],
        }
    value: dict[str, Any] | None = None
    if p.value_usd is not None:
        value = {
            "value_usd": round(p.value_usd, 6),
            "by_stage_country": [
                {"stage": k[0], "country": k[1] or None, "feoc": k[2], "pfe": k[3], "usd": round(v, 6)}
                for k, v in sorted(p.value_origins.items(), key=lambda kv: (-kv[1], kv[0]))
            ],
        }
    return {
        "batch_id": p.batch_id,
        "custody_model": p.custody_model,
        "ancestors": p.ancestors,
        "missing_parents": p.missing_parents,
        "elements": elements,
        "value": value,
        "events": p.events,
    }


# -- building nodes from signed events (the offline verifier's path) -------------------------------
def nodes_from_events(events: Iterable[tuple[Event, str]], registry: Registry) -> dict[str, BatchNode]:
    """Batch nodes from transformation events (with ids), facility facts from the registry."""
    nodes: dict[str, BatchNode] = {}
    for ev, event_id in events:
        kind = Kind(ev.kind)
        if kind not in TRANSFORM_KINDS:
            continue
        fac = registry.facilities.get(ev.facility_id)
        if fac is None:
            raise ValueError(f"facility {ev.facility_id!r} of event {event_id} is not in the registry given")
        outputs = list(getattr(ev, "outputs", []))
        contained = [_floats(o.contained_kg) for o in outputs]
        if len(outputs) == 1:  # the common case, and the hot path of append
            produced = contained[0]
            value_out = None if outputs[0].value_usd is None else float(outputs[0].value_usd)
        else:  # exact decimal sums, as the store keeps them (extra_for_event), then one rounding
            produced = {
                el: float(sum((getattr(o.contained_kg, name) for o in outputs), Decimal(0)))
                for el, name in ELEMENT_FIELD.items()
            }
            values = [o.value_usd for o in outputs]
            value_out = (
                None
                if any(v is None for v in values)
                else float(sum((v for v in values if v is not None), Decimal(0)))
            )
        feeds: tuple[FeedInfo, ...] = ()
        consumer = None
        if isinstance(ev, BatchRecycled):
            consumer = ev.feed_consumer
            feeds = tuple(
                FeedInfo(
                    f.consumer,
                    float(f.kg),
                    {el: float(f.contained_kg.get(el)) for el in ELEMENTS},
                    f.origin_country or "",
                )
                for f in ev.external_feed
            )
        inputs = tuple((i.batch_id, float(i.kg)) for i in getattr(ev, "inputs", []))
        feoc, pfe = fac.feoc_at(ev.time), fac.pfe_at(ev.time)
        for o, own in zip(outputs, contained, strict=True):
            nodes[o.batch_id] = BatchNode(
                batch_id=o.batch_id,
                event_id=event_id,
                kind=kind,
                facility_id=ev.facility_id,
                country=fac.country,
                feoc=feoc,
                pfe=pfe,
                time=ev.time,
                kg=float(o.kg),
                contained=own,
                value_usd=None if o.value_usd is None else float(o.value_usd),
                inputs=inputs,
                event_produced=produced,
                event_value_out=value_out,
                feed_consumer=consumer,
                external_feed=feeds,
                material=o.material,
            )
    return nodes


def _floats(m: Any) -> dict[Element, float]:
    return {
        Element.LI: float(m.li),
        Element.NI: float(m.ni),
        Element.CO: float(m.co),
        Element.MN: float(m.mn),
        Element.GRAPHITE: float(m.graphite),
    }


def extra_for_event(outputs: Sequence[Any]) -> dict[str, str]:
    """Per-event facts the store keeps on each output row so `compute` can run from rows alone.

    Only an event with several outputs needs them: with one output, its own contents are the event's.
    """
    if len(outputs) < 2:
        return {}
    produced = {
        name: str(sum((getattr(o.contained_kg, name) for o in outputs), Decimal(0)))
        for name in ELEMENT_FIELD.values()
    }
    values = [o.value_usd for o in outputs]
    value_out = (
        None if any(v is None for v in values) else str(sum((v for v in values if v is not None), Decimal(0)))
    )
    return {"event_produced": dumps_sorted(produced), "event_value_out": json.dumps(value_out)}


# -- JSON text the append path writes per row ------------------------------------------------------
def _json_encoder(item_separator: str, key_separator: str, sort_keys: bool) -> Callable[[Any], str]:
    """`json.dumps(obj, separators=..., sort_keys=...)`, byte for byte, without building an encoder
    per call (json.dumps makes a JSONEncoder and a C encoder each time: most of its cost for the small
    objects of an append row). No circular-reference check: the objects given are plain trees."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # a Python without the C accelerator: the same text, the slow way
        return lambda obj: json.dumps(obj, separators=(item_separator, key_separator), sort_keys=sort_keys)

    def default(obj: Any) -> Any:
        raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")

    enc = make(
        None,
        default,
        json.encoder.encode_basestring_ascii,
        None,
        key_separator,
        item_separator,
        sort_keys,
        False,
        True,
    )
    join = "".join
    return lambda obj: join(enc(obj, 0))


#: json.dumps(obj, sort_keys=True)
dumps_sorted = _json_encoder(", ", ": ", True)
#: json.dumps(obj, separators=(",", ":"))
dumps_compact = _json_encoder(",", ":", False)


# -- the stored form (the ledger's provenance index, written in the append transaction) -------------
def encode_origins(mass: Mapping[Element, Mapping[Origin, float]], value: Mapping[ValueKey, float]) -> str:
    name = ELEMENT_FIELD
    return dumps_compact(
        {
            "mass": {name[el]: [[*k, v] for k, v in split.items()] for el, split in mass.items() if split},
            "value": [[*k, v] for k, v in value.items()],
        }
    )


def decode_origins(text: str) -> tuple[dict[Element, dict[Origin, float]], dict[ValueKey, float]]:
    data = json.loads(text)
    mass: dict[Element, dict[Origin, float]] = {el: {} for el in ELEMENTS}
    for el, rows in data.get("mass", {}).items():
        mass[Element(el)] = {(r[0], r[1], r[2], r[3], bool(r[4])): float(r[5]) for r in rows}
    value = {(r[0], r[1], bool(r[2]), bool(r[3])): float(r[4]) for r in data.get("value", [])}
    return mass, value
