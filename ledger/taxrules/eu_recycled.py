"""EU Battery Regulation (EU) 2023/1542 recycled content, and its Battery Pass export.

Sources: Regulation (EU) 2023/1542 Art. 8 (recycled content per battery model, year and plant; minimum
shares of cobalt, lead, lithium and nickel from 18 August 2031 and 18 August 2036, from the rule pack); DIN DKE SPEC 99100 and
the Battery Pass data model, Circularity 1.2.0 `recycledContent`: a list of
`{recycledMaterial, preConsumerShare, postConsumerShare}` with shares in percent (0-100).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from enum import StrEnum

from ledger.taxrules._common import FindingContext, cited, fraction, non_negative, positive
from ledger.taxrules._common import year as check_year
from ledger.taxrules.errors import InputError
from ledger.taxrules.findings import ClaimKind, Comparison, CustodyModel, Finding, Requirement
from ledger.taxrules.pack import ParamLog, RulePack
from ledger.taxrules.policy import Threshold


class RecycledMaterial(StrEnum):
    COBALT = "cobalt"
    LITHIUM = "lithium"
    NICKEL = "nickel"
    LEAD = "lead"


#: enumeration values of Battery Pass Circularity 1.2.0 `recycledMaterial`
BATTERY_PASS_MATERIAL = {
    RecycledMaterial.COBALT: "Cobalt",
    RecycledMaterial.LITHIUM: "Lithium",
    RecycledMaterial.NICKEL: "Nickel",
    RecycledMaterial.LEAD: "Lead",
}


@dataclass(frozen=True)
class RecycledContent:
    """Shares (fractions 0..1) of one material in active materials recovered from pre-consumer
    (manufacturing) waste and from post-consumer (end-of-life) waste."""

    material: RecycledMaterial
    pre_consumer_share: Decimal
    post_consumer_share: Decimal

    @property
    def total_share(self) -> Decimal:
        return self.pre_consumer_share + self.post_consumer_share


def recycled_content_from_masses(
    material: RecycledMaterial, *, total_kg: Decimal, pre_consumer_kg: Decimal, post_consumer_kg: Decimal
) -> RecycledContent:
    """Shares from contained masses, as the ledger's provenance split gives them."""
    positive("total_kg", total_kg)
    non_negative("pre_consumer_kg", pre_consumer_kg)
    non_negative("post_consumer_kg", post_consumer_kg)
    if pre_consumer_kg + post_consumer_kg > total_kg:
        raise InputError(
            "post_consumer_kg", f"recycled mass exceeds the total {total_kg} kg of {material.value}"
        )
    return RecycledContent(material, pre_consumer_kg / total_kg, post_consumer_kg / total_kg)


def _validate(contents: Sequence[RecycledContent]) -> None:
    seen: set[RecycledMaterial] = set()
    for i, c in enumerate(contents):
        if c.material in seen:
            raise InputError(f"contents[{i}]", f"{c.material.value} is given twice")
        seen.add(c.material)
        fraction(f"contents[{i}].pre_consumer_share", c.pre_consumer_share)
        fraction(f"contents[{i}].post_consumer_share", c.post_consumer_share)
        if c.total_share > 1:
            raise InputError(f"contents[{i}]", f"pre + post consumer shares of {c.material.value} exceed 1")


def battery_pass_recycled_content(contents: Sequence[RecycledContent]) -> list[dict[str, str | Decimal]]:
    """The Battery Pass (DIN DKE SPEC 99100; Circularity 1.2.0) `recycledContent` list, shares in percent.
    Serialise with `findings.dumps_json` to keep the decimals exact."""
    _validate(contents)
    return [
        {
            "recycledMaterial": BATTERY_PASS_MATERIAL[c.material],
            "preConsumerShare": c.pre_consumer_share * 100,
            "postConsumerShare": c.post_consumer_share * 100,
        }
        for c in contents
    ]


def evaluate_recycled_content(
    pack: RulePack,
    *,
    plant_id: str,
    battery_model: str,
    year: int,
    contents: Sequence[RecycledContent],
    period_start: date | None = None,
    period_end: date | None = None,
    events: Sequence[str] = (),
    custody_model: CustodyModel = CustodyModel.MASS_BALANCE,
) -> Finding:
    """Check each material's pre- plus post-consumer share against the minimum in force for the year
    (Regulation (EU) 2023/1542 Art. 8(2)-(3)). Materials not given are taken as absent from the active
    materials. A year with no minimum in force gives not_applicable (the shares are still reported).

    The minimums start on 18 August: the one in force at the end of the period (default the calendar
    year) applies, and a note says when a minimum starts inside the period (production before it is
    not subject; audit the part of the year before it separately to see that)."""
    check_year("year", year)
    start = period_start or date(year, 1, 1)
    end = period_end or date(year, 12, 31)
    if start.year != year or end.year != year or end < start:
        raise InputError("period_end", f"the period {start}..{end} must lie within {year}, start first")
    if not plant_id or not battery_model:
        raise InputError(
            "plant_id", "plant_id and battery_model are required (Art. 8 is per model and plant)"
        )
    _validate(contents)
    log = ParamLog(pack)
    ctx = FindingContext(
        ClaimKind.EU_RECYCLED_CONTENT,
        log,
        custody_model,
        events=list(events),
        inputs={
            "plant_id": plant_id,
            "battery_model": battery_model,
            "year": year,
            "period_start": period_start,
            "period_end": period_end,
        },
    )
    log.text("eu_recycled.battery_pass_model")
    requirements: list[Requirement] = []
    amounts: dict[str, Decimal] = {}
    minimums = pack.eu_recycled.minimum_share
    for c in contents:
        amounts[f"{c.material.value}_pre_consumer_share"] = c.pre_consumer_share
        amounts[f"{c.material.value}_post_consumer_share"] = c.post_consumer_share
        amounts[f"{c.material.value}_recycled_share"] = c.total_share
        path = f"eu_recycled.minimum_share.{c.material.value}"
        if c.material.value not in minimums:
            ctx.notes.append(f"rule pack has no minimum recycled share for {c.material.value}")
            continue
        minimum = log.by_date(path, end, "period end")
        starting = [st for st in log.date_steps(path) if start < st.start <= end]
        for st in starting:
            ctx.notes.append(
                f"{c.material.value}: the minimum {st.value} applies from {st.start}, inside the period "
                f"{start}..{end}; the figures cover the whole period (audit {start}..{st.start.fromordinal(st.start.toordinal() - 1)} "
                "separately for production before it)"
            )
        if minimum is None:
            ctx.notes.append(f"no minimum recycled share for {c.material.value} in force on {end}")
            continue
        requirements.append(
            Threshold[RecycledContent](
                f"{c.material.value}: recycled share (pre + post consumer)",
                lambda x: x.total_share,
                minimum,
                comparison=Comparison.GE,
                **cited(log, path),
                threshold_year=end.year,
            ).evaluate(c)
        )
    if not contents:
        ctx.warnings.append("no recycled-content figures given")
    return ctx.finish(requirements, amounts, applicable=bool(requirements))
