from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal as D
from pathlib import Path

import pytest

from ledger.taxrules.errors import InputError
from ledger.taxrules.eu_recycled import (
    RecycledContent,
    RecycledMaterial,
    battery_pass_recycled_content,
    evaluate_recycled_content,
    recycled_content_from_masses,
)
from ledger.taxrules.findings import Finding, dumps_json
from ledger.taxrules.pack import RulePack, load_pack

from .conftest import param

CO, LI, NI, PB = (
    RecycledMaterial.COBALT,
    RecycledMaterial.LITHIUM,
    RecycledMaterial.NICKEL,
    RecycledMaterial.LEAD,
)


def run(pack: RulePack, year: int, *contents: RecycledContent) -> Finding:
    return evaluate_recycled_content(
        pack, plant_id="plant-7", battery_model="M1", year=year, contents=contents
    )


MINIMA = [
    (CO, 2031, "0.16"),
    (CO, 2035, "0.16"),
    (CO, 2036, "0.26"),
    (LI, 2031, "0.06"),
    (LI, 2036, "0.12"),
    (NI, 2031, "0.06"),
    (NI, 2036, "0.15"),
    (NI, 2050, "0.15"),
]


@pytest.mark.parametrize(("material", "year", "minimum"), MINIMA)
@pytest.mark.parametrize(("delta", "ok"), [("0", True), ("-0.0001", False), ("0.0001", True)])
def test_minimum_shares(
    pack: RulePack, material: RecycledMaterial, year: int, minimum: str, delta: str, ok: bool
) -> None:
    total = D(minimum) + D(delta)
    pre = total / 2
    f = run(pack, year, RecycledContent(material, pre, total - pre))
    assert f.passed is ok
    [req] = f.requirements
    assert req.threshold == D(minimum)
    assert req.threshold_year == year


def test_no_minimum_before_2031(pack: RulePack) -> None:
    f = run(pack, 2030, RecycledContent(CO, D(0), D(0)))
    assert f.status == "not_applicable"
    assert f.amounts["cobalt_recycled_share"] == 0


def test_one_failing_material_fails_the_plant_year(pack: RulePack) -> None:
    f = run(pack, 2031, RecycledContent(CO, D("0.2"), D(0)), RecycledContent(NI, D("0.01"), D("0.01")))
    assert f.status == "fail"
    assert [r.passed for r in f.requirements] == [True, False]


def test_lead_without_a_minimum_in_the_pack_is_noted(pack: RulePack) -> None:
    f = run(pack, 2031, RecycledContent(PB, D("0.5"), D("0.3")), RecycledContent(CO, D("0.2"), D(0)))
    assert f.passed
    assert any("no minimum recycled share for lead" in n for n in f.notes)


def test_shares_from_masses() -> None:
    c = recycled_content_from_masses(NI, total_kg=D(200), pre_consumer_kg=D(10), post_consumer_kg=D(30))
    assert (c.pre_consumer_share, c.post_consumer_share, c.total_share) == (D("0.05"), D("0.15"), D("0.2"))
    with pytest.raises(InputError):
        recycled_content_from_masses(NI, total_kg=D(10), pre_consumer_kg=D(6), post_consumer_kg=D(5))


def test_battery_pass_export_shape() -> None:
    out = battery_pass_recycled_content(
        [RecycledContent(CO, D("0.125"), D("0.03")), RecycledContent(LI, D(0), D("0.06"))]
    )
    assert out == [
        {"recycledMaterial": "Cobalt", "preConsumerShare": D("12.5"), "postConsumerShare": D("3")},
        {"recycledMaterial": "Lithium", "preConsumerShare": D(0), "postConsumerShare": D("6")},
    ]
    assert dumps_json(out).startswith(
        '[{"recycledMaterial": "Cobalt", "preConsumerShare": 12.5, "postConsumerShare": 3}'
    )


@pytest.mark.parametrize(
    "contents",
    [
        (RecycledContent(CO, D("0.6"), D("0.5")),),
        (RecycledContent(CO, D("-0.1"), D("0.1")),),
        (RecycledContent(CO, D("0.1"), D("0.1")), RecycledContent(CO, D("0.1"), D("0.1"))),
    ],
)
def test_bad_contents(pack: RulePack, contents: tuple[RecycledContent, ...]) -> None:
    with pytest.raises(InputError):
        run(pack, 2031, *contents)


def test_user_pack_minimum_changes_result(user_pack: Callable[..., Path]) -> None:
    schedule = [{"from_year": 2028, "value": "0.10"}]
    override = {"eu_recycled": {"minimum_share": {"cobalt": param(schedule)}}}
    pack = load_pack(user_pack(override))
    assert run(pack, 2028, RecycledContent(CO, D("0.1"), D(0))).passed
    assert pack.eu_recycled.minimum_share["nickel"].value[0].from_year == 2031  # merged, not replaced
