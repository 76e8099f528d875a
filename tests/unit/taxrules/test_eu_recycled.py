from __future__ import annotations

from collections.abc import Callable
from datetime import date
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


@pytest.mark.parametrize(
    ("year", "share", "ok"), [(2031, "0.85", True), (2036, "0.849", False), (2036, "0.85", True)]
)
def test_lead_minimum_85_percent(pack: RulePack, year: int, share: str, ok: bool) -> None:
    # review B10: Art. 8(2)(b), 8(3)(b)
    f = run(pack, year, RecycledContent(PB, D(share), D(0)))
    [req] = f.requirements
    assert req.threshold == D("0.85") and f.passed is ok


def test_review_b10_repro_lead_at_10_percent_fails_2036(pack: RulePack) -> None:
    f = run(
        pack,
        2036,
        RecycledContent(CO, D("0.26"), D(0)),
        RecycledContent(LI, D("0.12"), D(0)),
        RecycledContent(NI, D("0.15"), D(0)),
        RecycledContent(PB, D("0.10"), D(0)),
    )
    assert f.status == "fail"


def test_minimums_start_on_18_august(pack: RulePack) -> None:
    # review B11: production up to 17 August 2031 is not subject to the 2031 minimum
    before = evaluate_recycled_content(
        pack,
        plant_id="p",
        battery_model="m",
        year=2031,
        contents=[RecycledContent(CO, D("0.01"), D(0))],
        period_end=date(2031, 8, 17),
    )
    assert before.status == "not_applicable"
    after = evaluate_recycled_content(
        pack,
        plant_id="p",
        battery_model="m",
        year=2031,
        contents=[RecycledContent(CO, D("0.01"), D(0))],
        period_start=date(2031, 8, 18),
    )
    assert after.status == "fail" and not any("inside the period" in n for n in after.notes)
    # the whole calendar year: the minimum in force at its end applies, and a note says where it starts
    year = run(pack, 2031, RecycledContent(CO, D("0.01"), D(0)))
    assert year.status == "fail" and any("2031-08-18" in n and "inside the period" in n for n in year.notes)
    # 2036: the 2031 minimum until 17 August, the higher one from 18 August
    mid = evaluate_recycled_content(
        pack,
        plant_id="p",
        battery_model="m",
        year=2036,
        contents=[RecycledContent(CO, D("0.20"), D(0))],
        period_end=date(2036, 8, 17),
    )
    assert mid.passed and mid.requirements[0].threshold == D("0.16")


def test_period_must_lie_in_the_year(pack: RulePack) -> None:
    with pytest.raises(InputError):
        evaluate_recycled_content(
            pack, plant_id="p", battery_model="m", year=2031, contents=[], period_end=date(2032, 1, 1)
        )


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
    schedule = [{"start": "2028-01-01", "value": "0.10"}]
    override = {"eu_recycled": {"minimum_share": {"cobalt": param(schedule)}}}
    pack = load_pack(user_pack(override))
    assert run(pack, 2028, RecycledContent(CO, D("0.1"), D(0))).passed
    assert pack.eu_recycled.minimum_share["nickel"].value[0].start == date(
        2031, 8, 18
    )  # merged, not replaced
