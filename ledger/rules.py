"""Append rules: what the sequencer checks before an event becomes a ledger entry.

Pure: the rules read and write `BatchState` records through a `StateView` (the store's rows plus the
uncommitted changes of the current append batch) and never touch a database themselves. Each failure
is an `EventError` with a stable reason code.
"""

from __future__ import annotations

import json
import json.encoder
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, NamedTuple, Protocol

from ledger.provenance import (
    BatchNode,
    Origin,
    ParentFacts,
    ValueKey,
    dumps_sorted,
    extra_for_event,
    extraction_origins,
    node_mass,
    node_value,
    nodes_from_events,
)
from ledger.registry import FacilityRecord, Registry
from schemas.events import (
    ELEMENT_FIELD,
    REGISTRY_FACILITY_ID,
    REGISTRY_KINDS,
    STAGE_OF_KIND,
    BatchExtracted,
    BatchOutput,
    BatchReceived,
    BatchRecycled,
    BatchShipped,
    Correction,
    Element,
    Kind,
    Stage,
    SupplierCertified,
)
from schemas.reasons import EventError, Reason
from schemas.signing import DecodedEvent

# Per-element mass conservation: outputs may contain at most the inputs' contained mass times
# (1 + MASS_TOLERANCE_REL) plus MASS_TOLERANCE_ABS_KG. Assays of one lot differ by a few tenths of a
# percent between labs; anything beyond that is material appearing from nowhere.
MASS_TOLERANCE_REL = Decimal("0.005")
MASS_TOLERANCE_ABS_KG = Decimal("0.001")

_json_str = json.encoder.encode_basestring_ascii  # a JSON string, as json.dumps writes it

# Which stages a transformation may consume. Material only flows forward; a cell, module or pack goes
# back to processing only through recycling.
ALLOWED_PARENT_STAGES: dict[Kind, frozenset[Stage]] = {
    Kind.BATCH_EXTRACTED: frozenset(),
    Kind.BATCH_PROCESSED: frozenset({Stage.EXTRACTION, Stage.PROCESSING, Stage.RECYCLING}),
    Kind.MATERIAL_PRODUCED: frozenset({Stage.PROCESSING, Stage.MATERIAL, Stage.RECYCLING}),
    Kind.CELLS_PRODUCED: frozenset({Stage.PROCESSING, Stage.MATERIAL}),
    Kind.MODULES_ASSEMBLED: frozenset({Stage.CELL, Stage.MATERIAL}),
    Kind.PACKS_ASSEMBLED: frozenset({Stage.CELL, Stage.MODULE, Stage.MATERIAL}),
    Kind.BATCH_RECYCLED: frozenset(
        {Stage.PROCESSING, Stage.MATERIAL, Stage.CELL, Stage.MODULE, Stage.PACK, Stage.RECYCLING}
    ),
}


@dataclass(slots=True)
class BatchState:
    """What the ledger knows of a batch; `consumed_kg` and `holders` change as events arrive."""

    batch_id: str
    event_id: str
    seq: int
    kind: Kind
    facility_id: str
    country: str
    feoc: bool
    pfe: bool
    time: datetime
    material: str
    kg: Decimal
    contained: dict[Element, Decimal]
    value_usd: Decimal | None = None
    consumed_kg: Decimal = Decimal(0)
    holders: dict[str, Decimal] = field(default_factory=dict)  # facility -> kg it holds (custody)
    in_transit: dict[str, Decimal] = field(default_factory=dict)  # facility -> kg shipped to it
    extra: dict[str, str] = field(default_factory=dict)  # kind-specific facts (recycling feed, kwh, ...)
    # the provenance index: this batch's origins, computed from its parents' when it was appended
    mass: dict[Element, dict[Origin, float]] = field(default_factory=dict)
    value: dict[ValueKey, float] = field(default_factory=dict)

    def as_node(self) -> BatchNode:
        """The facts `node_mass` / `node_value` read of a parent."""
        return BatchNode(
            batch_id=self.batch_id,
            event_id=self.event_id,
            kind=self.kind,
            facility_id=self.facility_id,
            country=self.country,
            feoc=self.feoc,
            time=self.time,
            kg=float(self.kg),
            contained={el: float(v) for el, v in self.contained.items()},
            value_usd=None if self.value_usd is None else float(self.value_usd),
            inputs=(),
            event_produced={},
            event_value_out=None,
        )

    @property
    def stage(self) -> Stage:
        return STAGE_OF_KIND[self.kind]

    @property
    def available_kg(self) -> Decimal:
        return self.kg - self.consumed_kg

    def custody_json(self) -> str:
        holders = self.holders
        if len(holders) == 1 and not self.in_transit:  # a new batch: its maker holds it all
            [(fid, kg)] = holders.items()
            return '{"holders": {' + _json_str(fid) + ": " + _json_str(str(kg)) + '}, "in_transit": {}}'
        return dumps_sorted(
            {
                "holders": {k: str(v) for k, v in self.holders.items()},
                "in_transit": {k: str(v) for k, v in self.in_transit.items()},
            }
        )

    def load_custody(self, text: str) -> None:
        data = json.loads(text)
        self.holders = {k: Decimal(v) for k, v in data.get("holders", {}).items()}
        self.in_transit = {k: Decimal(v) for k, v in data.get("in_transit", {}).items()}


@dataclass(frozen=True, slots=True)
class Edge:
    parent: str
    child: str
    kg: Decimal
    seq: int


class StateView(Protocol):
    def batch(self, batch_id: str) -> BatchState | None: ...

    def event_bytes(self, event_id: str) -> bytes | None: ...


@dataclass(slots=True)
class Outcome:
    """What appending one event changes (applied by the caller only when the event is accepted)."""

    new_batches: list[BatchState] = field(default_factory=list)
    touched: list[BatchState] = field(default_factory=list)
    edges: list[Edge] = field(default_factory=list)


def _fmt(x: Decimal) -> str:
    return f"{x.normalize():f}"


def check_and_plan(decoded: DecodedEvent, state: StateView, registry: Registry, seq: int) -> Outcome:
    """Rules 1-9 for one event whose identity `registry.authorize` has accepted.

    Returns the changes to make; does not apply them, so a rejected event leaves no trace in `state`.
    """
    ev = decoded.event
    out = Outcome()
    if type(ev) is BatchExtracted and not ev.inputs:
        return _extraction(decoded, ev, state, registry, seq, out)  # the commonest event, in short
    kind = decoded.kind
    if kind in REGISTRY_KINDS:
        registry.check_registry_event(ev)
        return out
    if isinstance(ev, Correction):
        # corrections point at an existing event and never rewrite it; only its signer (or the registry
        # authority) may correct it
        target = state.event_bytes(ev.corrects)
        if ev.corrects == decoded.event_id or target is None:
            raise EventError(Reason.CORRECTION_TARGET, f"event {ev.corrects} is not in the ledger")
        signer = json.loads(target).get("facility_id")
        if ev.facility_id not in (signer, REGISTRY_FACILITY_ID):
            raise EventError(
                Reason.ROLE_NOT_ALLOWED,
                f"{ev.facility_id} may not correct event {ev.corrects} of {signer}: only its signer or the registry",
            )
        return out
    if isinstance(ev, SupplierCertified):
        for bid in ev.batch_ids:
            b = state.batch(bid)
            if b is None:
                raise EventError(Reason.UNKNOWN_INPUT, f"certified batch {bid!r} is not in the ledger")
            if b.facility_id != ev.facility_id:
                raise EventError(Reason.NOT_CUSTODIAN, f"{ev.facility_id} did not produce batch {bid!r}")
        return out
    if isinstance(ev, BatchShipped):
        b = _existing(state, ev.batch_id)
        held = b.holders.get(ev.facility_id, Decimal(0))
        if held < ev.kg:
            raise EventError(
                Reason.NOT_CUSTODIAN,
                f"{ev.facility_id} holds {_fmt(held)} kg of {ev.batch_id}, cannot ship {_fmt(ev.kg)} kg",
            )
        if registry.facilities.get(ev.to_facility_id) is None:
            raise EventError(Reason.UNKNOWN_FACILITY, f"consignee {ev.to_facility_id!r} is not registered")
        b.holders[ev.facility_id] = held - ev.kg
        b.in_transit[ev.to_facility_id] = b.in_transit.get(ev.to_facility_id, Decimal(0)) + ev.kg
        out.touched.append(b)
        return out
    if isinstance(ev, BatchReceived):
        b = _existing(state, ev.batch_id)
        pending = b.in_transit.get(ev.facility_id, Decimal(0))
        if pending < ev.kg:
            raise EventError(
                Reason.NOT_CUSTODIAN,
                f"only {_fmt(pending)} kg of {ev.batch_id} is in transit to {ev.facility_id}; "
                f"cannot receive {_fmt(ev.kg)} kg",
            )
        b.in_transit[ev.facility_id] = pending - ev.kg
        b.holders[ev.facility_id] = b.holders.get(ev.facility_id, Decimal(0)) + ev.kg
        out.touched.append(b)
        return out
    return _transform(decoded, state, registry, seq, out)


def _extraction(
    decoded: DecodedEvent, ev: BatchExtracted, state: StateView, registry: Registry, seq: int, out: Outcome
) -> Outcome:
    """`_transform` of an extraction (no inputs, so no cycle, custody, stage or mass rule): the same
    checks in the same order and the same plan, without the steps that have nothing to do."""
    outputs = ev.outputs
    for o in outputs:
        if state.batch(o.batch_id) is not None:
            raise EventError(Reason.BATCH_EXISTS, f"batch {o.batch_id!r} already exists in the ledger")
    maker = _maker(decoded, ev, registry, Kind.BATCH_EXTRACTED, seq, extra_for_event(outputs))
    for o in outputs:
        contained = _contained(o)
        mass, value = extraction_origins(
            {el: float(v) for el, v in contained.items()},
            maker.country,
            maker.feoc,
            maker.pfe,
            None if o.value_usd is None else float(o.value_usd),
        )
        out.new_batches.append(_output_state(o, contained, maker, mass, value))
    return out


def _attested(fac: FacilityRecord, when: datetime) -> tuple[bool, bool]:
    """(FEOC, prohibited foreign entity) of a facility at a time: one attestation look-up for both."""
    att = fac.attestation_at(when)
    return bool(att and att[0].feoc), bool(att and att[0].prohibited_foreign_entity)


def _contained(o: Any) -> dict[Element, Decimal]:
    cm = o.contained_kg
    return {el: getattr(cm, name) for el, name in ELEMENT_FIELD.items()}


class _Maker(NamedTuple):
    """What every output of one event shares: who made it, where, when, under which attestation."""

    event_id: str
    seq: int
    kind: Kind
    facility_id: str
    country: str
    feoc: bool
    pfe: bool
    time: datetime
    extra: Mapping[str, str]


def _maker(
    decoded: DecodedEvent, ev: Any, registry: Registry, kind: Kind, seq: int, extra: Mapping[str, str]
) -> _Maker:
    fac = registry.facilities[ev.facility_id]
    feoc, pfe = _attested(fac, ev.time)  # once: FacilityRecord.feoc_at / pfe_at each look it up
    return _Maker(decoded.event_id, seq, kind, ev.facility_id, fac.country, feoc, pfe, ev.time, extra)


def _output_state(o: Any, contained: dict[Element, Decimal], m: _Maker, mass: Any, value: Any) -> BatchState:
    """The state of a batch an event makes: held whole by its maker, nothing consumed yet."""
    return BatchState(
        o.batch_id,
        m.event_id,
        m.seq,
        m.kind,
        m.facility_id,
        m.country,
        m.feoc,
        m.pfe,
        m.time,
        o.material,
        o.kg,
        contained,
        o.value_usd,
        Decimal(0),
        {m.facility_id: o.kg},
        {},
        dict(m.extra),
        mass,
        value,
    )


def _existing(state: StateView, batch_id: str) -> BatchState:
    b = state.batch(batch_id)
    if b is None:
        raise EventError(Reason.UNKNOWN_INPUT, f"batch {batch_id!r} is not in the ledger")
    return b


def _transform(
    decoded: DecodedEvent, state: StateView, registry: Registry, seq: int, out: Outcome
) -> Outcome:
    ev = decoded.event
    kind = decoded.kind
    assert not isinstance(ev, BatchShipped | BatchReceived | Correction | SupplierCertified)
    inputs = list(getattr(ev, "inputs", []))
    outputs: list[BatchOutput] = list(getattr(ev, "outputs", []))
    in_ids = {i.batch_id for i in inputs}
    # 1. no cycles: a batch cannot feed the event that creates it
    loop = in_ids & {o.batch_id for o in outputs}
    if loop:
        raise EventError(Reason.CYCLE, f"batch {sorted(loop)[0]!r} is both input and output")
    # 2. outputs are new ids
    for o in outputs:
        if state.batch(o.batch_id) is not None:
            raise EventError(Reason.BATCH_EXISTS, f"batch {o.batch_id!r} already exists in the ledger")
    # 3. inputs exist, are held by the consuming facility and are not overdrawn
    parents: list[tuple[BatchState, Decimal]] = []
    for i in inputs:
        p = state.batch(i.batch_id)
        if p is None:
            raise EventError(Reason.UNKNOWN_INPUT, f"input batch {i.batch_id!r} is not in the ledger")
        held = p.holders.get(ev.facility_id, Decimal(0))
        if held < i.kg:
            if p.available_kg < i.kg:
                raise EventError(
                    Reason.OVERDRAWN,
                    f"batch {i.batch_id!r} has {_fmt(p.available_kg)} kg left of {_fmt(p.kg)} kg; "
                    f"{_fmt(i.kg)} kg requested",
                )
            raise EventError(
                Reason.NOT_CUSTODIAN,
                f"{ev.facility_id} holds {_fmt(held)} kg of {i.batch_id!r}; ship and receive it before use",
            )
        # 4. plausible stage order
        allowed = ALLOWED_PARENT_STAGES[kind]
        if p.stage not in allowed:
            raise EventError(
                Reason.STAGE_ORDER,
                f"{kind.value} cannot consume {p.stage.value}-stage batch {i.batch_id!r}"
                + (" (only through recycling)" if p.stage in (Stage.CELL, Stage.MODULE, Stage.PACK) else ""),
            )
        parents.append((p, i.kg))
    # 5. per-element mass conservation
    external = list(ev.external_feed) if isinstance(ev, BatchRecycled) else []
    if not isinstance(ev, BatchExtracted):
        for el, name in ELEMENT_FIELD.items():
            produced = sum((getattr(o.contained_kg, name) for o in outputs), Decimal(0))
            if not produced:
                continue  # nothing of it produced: never more than the inputs supply
            supplied = sum((p.contained[el] * kg / p.kg for p, kg in parents if p.kg > 0), Decimal(0)) + sum(
                (getattr(f.contained_kg, name) for f in external), Decimal(0)
            )
            limit = supplied * (1 + MASS_TOLERANCE_REL) + MASS_TOLERANCE_ABS_KG
            if produced > limit:
                raise EventError(
                    Reason.MASS_NOT_CONSERVED,
                    f"outputs contain {_fmt(produced)} kg {el.value}, inputs supply {_fmt(supplied)} kg "
                    f"(tolerance {MASS_TOLERANCE_REL * 100}% + {MASS_TOLERANCE_ABS_KG} kg)",
                )
    # all checks passed: plan the changes
    if not parents and not external and STAGE_OF_KIND[kind] is Stage.EXTRACTION:
        # an extraction that did not take check_and_plan's short way (not a BatchExtracted model):
        # the same plan; its outputs were checked above and are checked again there, without effect
        return _extraction(decoded, ev, state, registry, seq, out)  # type: ignore[arg-type]
    extra: dict[str, str] = extra_for_event(outputs)
    if isinstance(ev, BatchRecycled):
        extra["feed_consumer"] = ev.feed_consumer
        if external:
            extra["external_feed"] = dumps_sorted([f.model_dump(mode="json") for f in external])
    maker = _maker(decoded, ev, registry, kind, seq, extra)
    for p, kg in parents:
        p.consumed_kg += kg
        p.holders[maker.facility_id] -= kg
        out.touched.append(p)
    out_nodes = nodes_from_events([(ev, maker.event_id)], registry)
    parent_facts: dict[str, ParentFacts] = {p.batch_id: _ParentFacts(p) for p, _ in parents}
    parent_mass = {p.batch_id: p.mass for p, _ in parents}
    parent_value = {p.batch_id: p.value for p, _ in parents}
    for o in outputs:
        node = out_nodes[o.batch_id]
        b = _output_state(
            o,
            _contained(o),
            maker,
            node_mass(node, parent_facts, parent_mass),
            node_value(node, parent_facts, parent_value),
        )
        out.new_batches.append(b)
        for p, kg in parents:
            out.edges.append(Edge(p.batch_id, o.batch_id, kg, seq))
    return out


class _ParentFacts:
    """What the provenance step reads of a parent batch (ledger.provenance.ParentFacts), as floats."""

    __slots__ = ("kg", "value_usd")

    def __init__(self, b: BatchState) -> None:
        self.kg = float(b.kg)
        self.value_usd = None if b.value_usd is None else float(b.value_usd)


def input_ids(decoded: DecodedEvent) -> Iterable[str]:
    """Batch ids an event needs to exist before it can be appended (for children-before-parents)."""
    ev = decoded.event
    shape = _shape(type(ev))
    if shape is None:  # not a pydantic event model
        for i in getattr(ev, "inputs", ()):
            yield i.batch_id
        value = getattr(ev, "batch_id", None)
        if isinstance(value, str):
            yield value
        yield from getattr(ev, "batch_ids", ())
        return
    has_inputs, has_batch_id, has_batch_ids = shape
    if has_inputs:
        for i in ev.inputs:  # type: ignore[union-attr]
            yield i.batch_id
    if has_batch_id:
        value = ev.batch_id  # type: ignore[union-attr]
        if isinstance(value, str):
            yield value
    if has_batch_ids:
        yield from ev.batch_ids  # type: ignore[union-attr]


_SHAPES: dict[type, tuple[bool, bool, bool]] = {}


def _shape(cls: type) -> tuple[bool, bool, bool] | None:
    """Which of inputs / batch_id / batch_ids an event model has (getattr with a default on a
    pydantic model that lacks the field goes through its slow __getattr__ fallback)."""
    shape = _SHAPES.get(cls)
    if shape is None:
        fields = getattr(cls, "model_fields", None)
        if not isinstance(fields, dict):
            return None
        shape = _SHAPES[cls] = ("inputs" in fields, "batch_id" in fields, "batch_ids" in fields)
    return shape
