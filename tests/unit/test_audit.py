"""`batteryledger audit`: end-to-end audits of the demo chain, numbers checked against hand arithmetic.

Every expected number below is worked out from the figures in batteryledger/sample.py (the demo
chain), step by step in the test, never copied from the code's output.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner, Result

from batteryledger.cli_audit import bundle_paths, register
from batteryledger.sample import SPEC, DemoChain, demo_chain
from ledger.audit import (
    AuditError,
    AuditResult,
    ClaimError,
    audit,
    load_claim,
    parse_claim,
)
from ledger.bundle_verify import verify_bundle
from ledger.core import Ledger
from ledger.taxrules.findings import Requirement
from ledger.taxrules.pack import parse_pack
from schemas.signing import save_private_key, sign_object

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "claims"
CENT = Decimal("0.01")


# -- fixtures -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def chain() -> DemoChain:
    return demo_chain()


def _demo_ledger(chain: DemoChain, path: Path) -> tuple[str, Ledger]:
    url = f"sqlite:///{path / 'ledger.db'}"
    led = Ledger.init(url, operator_key=chain.operator_key, origin="test.batteryledger.org/audit")
    results = led.append([e.raw for e in chain.good_events])
    assert {r.status for r in results} == {"appended"}
    return url, led


@pytest.fixture(scope="module")
def demo(chain: DemoChain, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Ledger]]:
    """The demo chain in a SQLite ledger, shared by the read-only tests of this module."""
    url, led = _demo_ledger(chain, tmp_path_factory.mktemp("audit-demo"))
    yield url, led
    led.close()


@pytest.fixture
def fresh(chain: DemoChain, tmp_path: Path) -> Iterator[tuple[str, Ledger]]:
    """A ledger of its own, for tests that append more events (certifications, corrections)."""
    url, led = _demo_ledger(chain, tmp_path)
    yield url, led
    led.close()


def run(led: Ledger, name: str, **changes: Any) -> AuditResult:
    """Audit an example claim, optionally with some fields changed."""
    claim = load_claim(EXAMPLES / name)
    if changes:
        claim = parse_claim({**claim.model_dump(mode="python"), **changes}, name)
    return audit(led, claim)


def req(result: AuditResult, name_start: str) -> Requirement:
    """The (possibly nested) requirement whose name starts with `name_start`."""
    stack = list(result.finding.requirements)
    while stack:
        r = stack.pop(0)
        if r.name.startswith(name_start):
            return r
        stack.extend(r.children)
    raise AssertionError(f"no requirement {name_start!r} in {[r.name for r in result.finding.requirements]}")


def fact(result: AuditResult, name: str, batch: str | None = None) -> Any:
    found = [f.value for f in result.facts if f.name == name and (batch is None or f.batch == batch)]
    assert len(found) == 1, (name, batch, found)
    return found[0]


def close(a: Decimal, b: Decimal, tol: str = "0.000001") -> bool:
    return abs(a - b) <= Decimal(tol)


# -- 45X --------------------------------------------------------------------------------------------
def test_45x_cell_example(demo: tuple[str, Ledger]) -> None:
    _, led = demo
    r = run(led, "45x-cell.yaml")
    # US-CELL-001: 18,130 kWh in 49,000 cells of 46,000 L in total, max discharge 36,260 kW
    wh_per_cell = Decimal(18130) * 1000 / 49000  # = 370 Wh, the 45X(c)(5) floor is 12 Wh
    wh_per_l = Decimal(18130) * 1000 / 46000  # = 394.13 Wh/L, the floor is 100 Wh/L
    assert wh_per_cell == 370
    assert fact(r, "wh_per_cell") == wh_per_cell
    assert fact(r, "wh_per_l") == wh_per_l.quantize(Decimal("0.000001"))
    assert req(r, "cell capacity (Wh)").value == wh_per_cell and req(r, "cell capacity (Wh)").threshold == 12
    assert close(Decimal(str(req(r, "cell energy density").value)), wh_per_l)
    # capacity cap 100 x 36,260 kW = 3,626,000 kWh is far above 18,130 kWh: nothing capped
    assert r.finding.amounts["capped_capacity_kwh"] == 18130
    # $35/kWh x 18,130 kWh x phase-out 100% (sold 2025) = $634,550
    assert r.finding.amounts["credit_usd"] == Decimal(35) * 18130 == 634550
    assert r.finding.amounts["phase_out_factor"] == 1
    assert r.status == "pass"
    assert req(r, "asserted credit_usd").passed
    assert req(r, "US-CELL-001 produced in the United States").passed
    assert r.custody_model.value == "mass_balance"


def test_45x_cell_phase_out_and_overclaim(demo: tuple[str, Ledger]) -> None:
    _, led = demo
    r = run(led, "45x-cell.yaml", sale_year=2031, prohibited_foreign_entity_taxpayer=False)
    # sold in 2031 the phase-out factor is 50%: 634,550 x 0.50 = 317,275 (the taxpayer is neither SFE
    # nor FIE, and the cells' MACR 0.905 computed from the ledger meets the 2031 threshold 0.85)
    assert req(r, "no material assistance from a prohibited foreign entity").passed
    assert r.finding.amounts["credit_usd"] == Decimal(634550) * Decimal("0.50") == 317275
    # the claim still asserts 634,550: more than the ledger supports, so the finding fails on it
    asserted = req(r, "asserted credit_usd")
    assert not asserted.passed and asserted.value == 634550 and asserted.threshold == 317275
    assert r.status == "fail"


def test_45x_production_year_must_match_the_ledger(demo: tuple[str, Ledger]) -> None:
    _, led = demo
    r = run(led, "45x-cell.yaml", production_year=2024, sale_year=2025)
    check = req(r, "US-CELL-001 production year as claimed")
    assert not check.passed and check.threshold == "2025"  # the cell event is dated 2025-04-06
    assert r.status == "fail" and r.finding.amounts["credit_usd"] == 0


def test_45x_module_example(demo: tuple[str, Ledger]) -> None:
    _, led = demo
    r = run(led, "45x-module.yaml")
    # US-MOD-001: 12,950 kWh in 1,000 modules = 12.95 kWh each (the floor is 7 kWh)
    assert req(r, "module capacity (kWh)").value == Decimal(12950) / 1000 == Decimal("12.95")
    # its cells: 70,000 kg of the 98,000 kg US-CELL-001 lot (18,130 kWh) = 12,950 kWh, 12.95 per module:
    # the cells' nameplate does not cap the module
    cells = Decimal(18130) * 70000 / 98000
    assert cells == 12950
    assert fact(r, "cells_kwh_consumed", "US-CELL-001") == cells
    assert fact(r, "cells_nameplate_kwh_per_unit") == cells / 1000
    # $10/kWh (module using cells) x 12,950 kWh = $129,500
    assert r.finding.amounts["rate"] == 10
    assert r.finding.amounts["credit_usd"] == Decimal(10) * 12950 == 129500
    assert r.status == "pass"


def test_45x_pack_assembled_from_modules_is_not_a_first_module_sale(demo: tuple[str, Ledger]) -> None:
    _, led = demo
    claim = parse_claim(
        {"kind": "45x", "component": "module", "subject": {"batches": ["US-PACK-001"]}, "sale_year": 2025}
    )
    r = audit(led, claim)
    # US-PACK-001 consumed module batch US-MOD-001: only the first module sold in a chain earns 45X
    assert not req(r, "first sale of this module in its chain").passed
    assert r.status == "fail" and r.finding.amounts["credit_usd"] == 0


def test_45x_component_must_match_the_batch_kind(demo: tuple[str, Ledger]) -> None:
    _, led = demo
    claim = parse_claim(
        {"kind": "45x", "component": "cell", "subject": {"batches": ["US-MOD-001"]}, "sale_year": 2025}
    )
    with pytest.raises(AuditError) as err:
        audit(led, claim)
    assert "modules.assembled" in err.value.diagnostics() and "cells.produced" in err.value.diagnostics()


def test_45x_electrode_active_material_excludes_the_eligible_graphite_it_consumed(
    demo: tuple[str, Ledger],
) -> None:
    _, led = demo
    claim = parse_claim(
        {
            "kind": "45x",
            "component": "electrode-active-material",
            "subject": {"batches": ["US-ANODE-001"]},
            "sale_year": 2025,
        }
    )
    r = audit(led, claim)
    # US-ANODE-001: production cost 95,000 USD, made from all 21,000 kg of US-SPG-001 (value 90,000 USD),
    # graphite at 99.95% >= 99.9%: already an applicable critical mineral, so its cost is excluded
    # (26 CFR 1.45X-3 examples 1-2): eligible cost 95,000 - 90,000 = 5,000; credit 10% = 500
    spg = Decimal(90000) * 21000 / 21000
    assert fact(r, "input_cost_usd", "US-SPG-001") == spg
    assert r.finding.amounts["excluded_cost_usd"] == spg
    assert r.finding.amounts["eligible_production_cost_usd"] == Decimal(95000) - spg == 5000
    assert r.finding.amounts["credit_usd"] == (Decimal("0.10") * 5000).quantize(CENT) == 500
    assert r.status == "pass"


def test_45x_foreign_cathode_gets_nothing_and_its_mineral_inputs_are_excluded(
    demo: tuple[str, Ledger],
) -> None:
    _, led = demo
    claim = parse_claim(
        {
            "kind": "45x",
            "component": "electrode-active-material",
            "subject": {"batches": ["KR-NMC811-002"]},
            "sale_year": 2025,
        }
    )
    r = audit(led, claim)
    # KR-NMC811-002 consumed (value x kg used / lot kg): LiOH 210,000 x 3,500/14,000 = 52,500;
    # NiSO4 510,000 x 18,000/85,000 = 108,000; CoSO4 160,000 x 1,800/22,000 = 13,090.91;
    # MnSO4 31,000 x 1,000/26,000 = 1,192.31; recycled salts 15,000 + 27,000 + 5,000 + 500 = 47,500
    inputs = [
        (Decimal(210000) * 3500 / 14000).quantize(CENT),
        (Decimal(510000) * 18000 / 85000).quantize(CENT),
        (Decimal(160000) * 1800 / 22000).quantize(CENT),
        (Decimal(31000) * 1000 / 26000).quantize(CENT),
        Decimal(15000),
        Decimal(27000),
        Decimal(5000),
        Decimal(500),
    ]
    assert sum(inputs) == Decimal("222283.22")
    # every input is a critical mineral in a listed form (hydroxide, sulfates): all excluded;
    # eligible = production cost 260,000 - 222,283.22 = 37,716.78
    assert r.finding.amounts["excluded_cost_usd"] == sum(inputs)
    assert r.finding.amounts["eligible_production_cost_usd"] == Decimal(260000) - sum(inputs)
    # ... but the cathode was made in Korea: 45X needs US production, so no credit
    assert not req(r, "KR-NMC811-002 produced in the United States").passed
    assert r.finding.amounts["credit_usd"] == 0 and r.status == "fail"


def test_45x_cost_below_inputs_is_refused(demo: tuple[str, Ledger]) -> None:
    _, led = demo
    claim = parse_claim(
        {
            "kind": "45x",
            "component": "electrode-active-material",
            "subject": {"batches": ["KR-NMC811-001"]},
            "sale_year": 2025,
        }
    )
    # production cost 380,000 < inputs 105,000 + 255,000 + 80,000 + 15,500 = 455,500
    with pytest.raises(AuditError, match=r"production_cost_usd 380000 is less than .*455500"):
        audit(led, claim)


# -- MACR -------------------------------------------------------------------------------------------
# US-CELL-001's event consumed the whole CAM lot, 18,000 of 20,000 kg anode, 2,000 of 10,000 kg Li2CO3
CELL_INPUTS = Decimal(1300000) + Decimal(160000) * 18000 / 20000 + Decimal(150000) * 2000 / 10000
# Ningbo (attested PFE) added 510,000 + 160,000 - (90,000 + 300,000) = 280,000; the CAM took half of
# each sulfate lot (42,500/85,000 and 11,000/22,000): 140,000 of PFE value inside the cathode
PFE_IN_CAM = (Decimal(510000) + 160000 - (90000 + 300000)) / 2
# the event made US-CELL-001 (4,200,000 USD) and scrap (20,000 USD): the cells carry 4,200/4,220 of it
CELL_SHARE = Decimal(4200000) / 4220000


def test_macr_example(demo: tuple[str, Ledger]) -> None:
    _, led = demo
    r = run(led, "macr-cell.yaml")
    assert CELL_INPUTS == 1474000 and PFE_IN_CAM == 140000
    amounts = r.finding.amounts
    assert amounts["total_direct_material_cost_usd"] == (CELL_INPUTS * CELL_SHARE).quantize(CENT)
    assert amounts["pfe_cost_usd"] == (PFE_IN_CAM * CELL_SHARE).quantize(CENT)
    # MACR = (1,474,000 - 140,000) / 1,474,000 = 0.90502 (the allocation share cancels out)
    assert close(amounts["macr"], (CELL_INPUTS - PFE_IN_CAM) / CELL_INPUTS, "0.00000001")
    assert amounts["threshold"] == Decimal("0.60")  # battery components sold in 2026
    assert req(r, "material assistance cost ratio").passed and r.status == "pass"


def test_macr_supplier_certification_replaces_the_look_through(
    chain: DemoChain, fresh: tuple[str, Ledger]
) -> None:
    _, led = fresh
    cam = chain.facilities["cam-kr-gwangyang"]

    def certify(time: str, **statement: str) -> str:
        obj = {
            "spec": SPEC,
            "kind": "supplier.certified",
            "facility_id": cam.facility_id,
            "time": time,
            "batch_ids": ["KR-NMC811-001"],
            "reference": "Notice 2026-15 certification 7",
            **statement,
        }
        raw, eid = sign_object(obj, cam.key)
        [res] = led.append([raw])
        assert res.status == "appended", res
        return eid

    first = certify("2025-12-01T00:00:00Z", statement="not_prohibited_foreign_entity")
    r = run(led, "macr-cell.yaml")
    # the supplier certifies the cathode as not PFE material: no PFE cost left, MACR = 1
    assert r.finding.amounts["pfe_cost_usd"] == 0 and r.finding.amounts["macr"] == 1
    assert first in r.finding.events and first in [e.event_id for e in r.events]
    assert any("supplier certification" in n for n in r.finding.notes)
    # a later certification of a 50% PFE cost share replaces it: (1,474,000 - 650,000) / 1,474,000 = 0.559,
    # below the 2026 threshold of 0.60
    certify("2025-12-02T00:00:00Z", statement="pfe_cost_share", pfe_cost_share="0.5")
    r = run(led, "macr-cell.yaml", asserted={})
    expected = (CELL_INPUTS - Decimal(1300000) / 2) / CELL_INPUTS
    assert close(r.finding.amounts["macr"], expected, "0.00000001")
    assert not req(r, "material assistance cost ratio").passed and r.status == "fail"


def test_macr_asserted_pfe_cost_may_not_be_below_the_ledger(demo: tuple[str, Ledger]) -> None:
    _, led = demo
    r = run(led, "macr-cell.yaml", asserted={"pfe_cost_usd": Decimal(100000)})
    check = req(r, "asserted pfe_cost_usd not below")
    # 100,000 asserted < 140,000 x 4,200/4,220 = 139,336.49 computed: the claim understates PFE cost
    assert not check.passed and check.threshold == (PFE_IN_CAM * CELL_SHARE).quantize(CENT)
    assert r.status == "fail"


# -- 30D --------------------------------------------------------------------------------------------
def test_30d_example(demo: tuple[str, Ledger]) -> None:
    _, led = demo
    r = run(led, "30d-pack.yaml")
    amounts = r.finding.amounts
    # Battery components (cell and module steps; US-PACK-002 has no modules):
    #   cell step of US-CELL-002: 2,300,000 - (880,000 CAM + 160,000 x 2,000/20,000 anode) = 1,404,000 (US)
    #   recycling is a new beginning: the recycled salts carry the recycler's value (a recycling step),
    #   not the cell value of the scrap it came from, so no other cell/module value and nothing unknown
    cell_002 = Decimal(2300000) - (880000 + Decimal(160000) * 2000 / 20000)
    assert cell_002 == 1404000
    assert fact(r, "unknown_step_value_usd") == Decimal("0.00")
    bc = cell_002 / cell_002  # all of it North American (US)
    assert close(amounts["battery_component_content"], bc)
    assert req(r, "battery components: North American content").passed  # >= 0.60 in 2025
    # Critical minerals, each valued at its last refining step and carried by mass:
    #   Li: LiOH 210,000 x 3,500/14,000 (575 kg Li) + recycled LiOH 15,000 (160 kg), 725 of 735 kg reach the pack
    #   Ni: NiSO4 510,000 x 18,000/85,000 (18,900 x 18,000/85,000 kg Ni) + recycled 27,000 (980 kg)
    #   Co: CoSO4 160,000 x 1,800/22,000 (4,600 x 1,800/22,000 kg) + recycled 5,000 (150 kg)
    #   Mn: MnSO4 31,000 x 1,000/26,000 (8,500 x 1,000/26,000 kg) + recycled 500 (125 kg)
    #   graphite: SPG 90,000 -> anode (19,800 of 20,900 kg kept) -> 2,000 of 20,000 kg anode in the cells
    ni_cn = Decimal(18900) * 18000 / 85000
    co_cn = Decimal(4600) * 1800 / 22000
    mn_us = Decimal(8500) * 1000 / 26000
    value = {
        "li": (Decimal(210000) * 3500 / 14000 + 15000) * 725 / (575 + 160),
        "ni": (Decimal(510000) * 18000 / 85000 + 27000) * 4900 / (ni_cn + 980),
        "co": (Decimal(160000) * 1800 / 22000 + 5000) * 515 / (co_cn + 150),
        "mn": (Decimal(31000) * 1000 / 26000 + 500) * 430 / (mn_us + 125),
        "graphite": Decimal(90000) * Decimal(19800) / 20900 * 2000 / 20000,
    }
    # qualifying share by mass: Li (AU -> US, recycled CA), Mn (MX -> US) and graphite (CA -> US) all qualify;
    # of Ni and Co only the recycled (Canada) part does; the rest was refined in China
    share = {
        "li": Decimal(1),
        "ni": Decimal(980) / (ni_cn + 980),
        "co": Decimal(150) / (co_cn + 150),
        "mn": Decimal(1),
        "graphite": Decimal(1),
    }
    for el in value:
        assert close(fact(r, f"{el}_value_usd"), value[el], "0.01"), el
        assert close(fact(r, f"{el}_qualifying_share"), share[el], "0.000000001"), el
    cm = sum((value[el] * share[el] for el in value), Decimal(0)) / sum(value.values(), Decimal(0))  # 0.4748
    assert close(amounts["critical_mineral_content"], cm)
    assert not req(r, "critical minerals: qualifying content").passed  # < 0.60 in 2025
    # FEOC: the Ningbo refinery is an attested FEOC and refined Ni and Co: excluded from 2025-01-01
    assert not req(r, "no critical mineral extracted, processed or recycled by a FEOC").passed
    assert req(r, "no battery component manufactured or assembled by a FEOC").passed
    assert amounts["credit_usd"] == 0
    assert not req(r, "asserted credit_usd").passed and r.status == "fail"
    # the shares the chart shows: 980 of 4,982.35 kg Ni recycled in Canada, the rest FEOC-touched
    assert close(r.shares["ni"]["recycled"], share["ni"], "0.000000001")
    assert close(r.shares["ni"]["feoc_touched"], 1 - share["ni"], "0.000000001")


def test_30d_needs_a_pack(demo: tuple[str, Ledger]) -> None:
    _, led = demo
    with pytest.raises(AuditError, match=r"packs\.assembled"):
        run(led, "30d-pack.yaml", subject={"batches": ["US-CELL-002"]})


# -- 48E / 45Y ---------------------------------------------------------------------------------------
def test_48e_example(demo: tuple[str, Ledger]) -> None:
    _, led = demo
    r = run(led, "48e-storage.yaml")
    # US value in US-PACK-001 (5,400,000 USD): pack step 5,400,000 - 4,600,000 = 800,000; module step
    # 4,600,000 - 4,200,000 x 70,000/98,000 = 1,600,000; from the cells (70,000 of 98,000 kg, the cells'
    # 4,200,000/4,220,000 share of their event): cell step 4,220,000 - 1,474,000 = 2,746,000, US refining
    # in the CAM (LiOH (210,000-120,000)/2 + MnSO4 (31,000-9,000)/2 = 56,000) and in the anode
    # ((90,000-20,000) x 18,000/20,000 = 63,000), US anode-making (160,000-90,000) x 18,000/20,000 = 63,000
    from_cells = (
        (Decimal(2746000) + 56000 + 63000 + 63000) * Decimal(70000) / 98000 * Decimal(4200000) / 4220000
    )
    us = Decimal(800000) + 1600000 + from_cells
    assert fact(r, "us_value_added_usd", "US-PACK-001") == us.quantize(CENT)
    assert close(r.finding.amounts["domestic_cost_percentage"], us / 5400000, "0.00000001")  # 0.8299
    # 48E construction began 2025-03-01, before 2025-06-16: 40% (45% only from 2025-06-16)
    assert r.finding.amounts["threshold"] == Decimal("0.40")
    assert r.finding.amounts["bonus_rate_points"] == Decimal("0.10")  # prevailing wage met
    assert r.status == "pass"


def test_45y_bonus_in_dollars(demo: tuple[str, Ledger]) -> None:
    _, led = demo
    claim = parse_claim(
        {
            "kind": "45y",
            "subject": {"project": "p", "batches": ["US-PACK-001"]},
            "construction_year": 2027,
            "steel_iron_us_share": "1",
            "base_credit_usd": "100000",
            "asserted": {"bonus_usd": "10000"},
        }
    )
    r = audit(led, claim)
    # 0.8299 >= 0.55 (2027); 45Y bonus is 10% of 100,000 = 10,000
    assert r.finding.amounts["threshold"] == Decimal("0.55")
    assert r.finding.amounts["bonus_usd"] == Decimal("0.10") * 100000 == 10000
    assert r.status == "pass"


# -- EU recycled content ------------------------------------------------------------------------------
def eu_expected() -> dict[str, tuple[Decimal, Decimal]]:
    """(pre, post) consumer shares over US-CELL-001 and US-CELL-002 by hand.

    Only US-CELL-002 has recycled content, all of it through its cathode lot KR-NMC811-002, which got
    the refined salts of the Canadian black mass. The black mass split pre/post by its feed: the cell
    plant's scrap (pre) and the bought-in packs (post): Li 30/180, Ni 190/900, Co 23/150 kg.
    """
    li_in = Decimal(160) / (Decimal(2300) * 3500 / 14000 + 160)  # recycled share of the CAM's Li
    ni_in = Decimal(980) / (Decimal(18900) * 18000 / 85000 + 980)
    co_in = Decimal(150) / (Decimal(4600) * 1800 / 22000 + 150)
    out: dict[str, tuple[Decimal, Decimal]] = {}
    for name, kg_002, total, rec, pre, post in (
        ("lithium", Decimal(725), Decimal(1480 + 725), li_in, 30, 180),
        ("nickel", Decimal(4900), Decimal(9200 + 4900), ni_in, 190, 900),
        ("cobalt", Decimal(515), Decimal(1120 + 515), co_in, 23, 150),
    ):
        recycled_kg = kg_002 * rec
        out[name] = (
            recycled_kg * pre / (pre + post) / total,
            recycled_kg * post / (pre + post) / total,
        )
    return out


def test_eu_recycled_example(demo: tuple[str, Ledger]) -> None:
    _, led = demo
    r = run(led, "eu-recycled-cells-2025.yaml")
    assert sorted(b.batch_id for b in r.batches) == ["US-CELL-001", "US-CELL-002"]  # not the scrap
    for name, (pre, post) in eu_expected().items():
        assert close(r.finding.amounts[f"{name}_pre_consumer_share"], pre), name
        assert close(r.finding.amounts[f"{name}_post_consumer_share"], post), name
        assert close(r.finding.amounts[f"{name}_recycled_share"], pre + post), name
    # cobalt: 515 x 150/526.36 = 146.76 kg recycled of 1,635 kg = 8.98%
    assert close(r.finding.amounts["cobalt_recycled_share"], Decimal("0.089762"), "0.000001")
    # minimum shares start in 2031: not applicable in 2025, the asserted shares are below the computed
    assert r.status == "not_applicable"
    assert all(x.passed for x in r.finding.requirements)


def test_eu_recycled_with_a_pack_that_brings_the_minimum_forward(
    demo: tuple[str, Ledger], tmp_path: Path
) -> None:
    _, led = demo
    pack = parse_pack(
        json.dumps(
            {
                "extends": "default",
                "eu_recycled": {
                    "minimum_share": {
                        "cobalt": {
                            "value": [{"start": "2025-01-01", "value": "0.16"}],
                            "citation": "test pack",
                            "confidence": "?",
                        }
                    }
                },
            }
        )
    )
    r = audit(led, load_claim(EXAMPLES / "eu-recycled-cells-2025.yaml"), pack=pack)
    pre, post = eu_expected()["cobalt"]
    cobalt = req(r, "cobalt: recycled share")
    assert close(Decimal(str(cobalt.value)), pre + post) and cobalt.threshold == Decimal("0.16")
    assert not cobalt.passed and r.status == "fail"  # 8.98% < 16%


# -- what the finding rests on --------------------------------------------------------------------------
def test_events_relied_on_carry_the_stored_hashes(demo: tuple[str, Ledger]) -> None:
    _, led = demo
    r = run(led, "45x-cell.yaml")
    cell = led.batch("US-CELL-001")
    assert cell is not None
    ids = [e.event_id for e in r.events]
    assert cell.event_id in ids
    assert set(ids) == set(led.provenance("US-CELL-001").events) == set(r.finding.events)
    seqs = [e.seq for e in r.events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    stored = led.entry_data(ids)
    for e in r.events:
        seq, data = stored[e.event_id]
        assert e.seq == seq
        assert e.leaf_hash == hashlib.sha256(b"\x00" + data).hexdigest()  # RFC 9162 leaf hash
    assert r.ledger.size == led.size and r.ledger.head == led.head_hash.hex()


def test_a_correction_of_a_relied_on_event_is_a_warning(chain: DemoChain, fresh: tuple[str, Ledger]) -> None:
    _, led = fresh
    cell = led.batch("US-CELL-001")
    assert cell is not None
    plant = chain.facilities["cell-us-georgia"]
    raw, eid = sign_object(
        {
            "spec": SPEC,
            "kind": "correction",
            "facility_id": plant.facility_id,
            "time": "2025-12-01T00:00:00Z",
            "corrects": cell.event_id,
            "reason": "incorrect_data",
            "explanation": "kWh re-measured",
        },
        plant.key,
    )
    assert led.append([raw])[0].status == "appended"
    r = run(led, "45x-cell.yaml")
    assert any(eid[:16] in w and "kWh re-measured" in w for w in r.finding.warnings)


def test_unconfirmed_audit_approximations_are_named(demo: tuple[str, Ledger]) -> None:
    _, led = demo
    r = run(led, "30d-pack.yaml")
    names = {p.name for p in r.finding.unconfirmed_parameters()}
    assert {"audit.30d_component_stages", "audit.30d_mineral_value", "audit.30d_procurement_chains"} <= names


# -- claim files ----------------------------------------------------------------------------------------
def test_every_example_claim_loads_and_the_kinds_are_covered() -> None:
    files = sorted(EXAMPLES.glob("*.yaml"))
    kinds = {load_claim(p).kind for p in files}
    assert kinds == {"45x", "macr", "30d", "48e", "eu-recycled"}
    assert len(files) == 6


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("kind: 45z\n", "kind: '45z' is not a claim kind"),
        ("component: cell\n", "kind: missing"),
        ("kind: 45x\ncomponent: cell\nsubject: {batches: [A]}\n", "sale_year: missing"),
        (
            "kind: 45x\ncomponent: cell\nsubject: {batchs: [A]}\nsale_year: 2025\n",
            "subject.batchs: unknown field",
        ),
        (
            "kind: 45x\ncomponent: cell\nsubject: {batches: [A]}\nsale_year: 2025\nasserted: {credit: 1}\n",
            "asserted.credit",
        ),
        ("kind: 45x\nkind: macr\n", "key 'kind' appears twice"),
        ("kind: [45x\n", "not valid YAML at line"),
    ],
)
def test_bad_claim_files(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "claim.yaml"
    path.write_text(text)
    with pytest.raises(ClaimError) as err:
        load_claim(path)
    line = err.value.diagnostics()
    assert line.startswith(f"{path}: ") and fragment in line and "\n" not in line


def test_json_claims_keep_decimals_exact(tmp_path: Path) -> None:
    path = tmp_path / "claim.json"
    path.write_text(
        '{"kind": "macr", "category": "battery-component", "subject": {"batches": ["X"]}, '
        '"sale_year": 2026, "asserted": {"macr": 0.1}}'
    )
    claim = load_claim(path)
    assert claim.asserted == {"macr": Decimal("0.1")}


# -- the command ---------------------------------------------------------------------------------------
cli = typer.Typer()
register(cli)


@cli.callback()
def _root() -> None:
    """Test root, so `audit` is a subcommand as in the real CLI."""


runner = CliRunner()


def invoke(*args: str) -> Result:
    return runner.invoke(cli, ["audit", *args])


def assert_error(result: Result, fragment: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and fragment in lines[0]
    assert "Traceback" not in result.stderr


def test_cli_json_has_pass_or_fail_per_requirement(demo: tuple[str, Ledger]) -> None:
    url, _ = demo
    result = invoke(str(EXAMPLES / "30d-pack.yaml"), "--store", url, "--json")
    assert result.exit_code == 1  # the claim fails
    assert result.stdout.count("\n") == 1
    data = json.loads(result.stdout, parse_float=Decimal)
    assert data["status"] == "fail" and data["passed"] is False
    assert all(isinstance(r["passed"], bool) for r in data["requirements"])
    by_name = {r["name"]: r for r in data["requirements"]}
    assert by_name["no critical mineral extracted, processed or recycled by a FEOC"]["passed"] is False
    assert data["custody_model"] == "mass_balance"
    assert {e["seq"] for e in data["events"]} and all(len(e["entry_hash"]) == 64 for e in data["events"])


def test_cli_exit_codes(demo: tuple[str, Ledger]) -> None:
    url, _ = demo
    assert invoke(str(EXAMPLES / "45x-cell.yaml"), "--store", url).exit_code == 0
    assert invoke(str(EXAMPLES / "30d-pack.yaml"), "--store", url).exit_code == 1
    assert invoke(str(EXAMPLES / "eu-recycled-cells-2025.yaml"), "--store", url).exit_code == 3


def test_cli_bad_inputs_are_one_line(demo: tuple[str, Ledger], tmp_path: Path) -> None:
    url, _ = demo
    unknown_kind = tmp_path / "kind.yaml"
    unknown_kind.write_text("kind: 46x\n")
    assert_error(invoke(str(unknown_kind), "--store", url), "is not a claim kind")
    missing = tmp_path / "missing.yaml"
    missing.write_text("kind: 30d\nsubject: {batches: [US-PACK-002]}\nacquired: 2025-07-01\n")
    assert_error(invoke(str(missing), "--store", url), "placed_in_service: missing")
    unknown_batch = tmp_path / "batch.yaml"
    unknown_batch.write_text(
        "kind: 45x\ncomponent: cell\nsubject: {batches: [US-CELL-999]}\nsale_year: 2025\n"
    )
    assert_error(invoke(str(unknown_batch), "--store", url), "'US-CELL-999' is not in the ledger")
    assert_error(invoke(str(tmp_path / "absent.yaml"), "--store", url), "cannot read the claim file")
    assert_error(
        invoke(str(EXAMPLES / "45x-cell.yaml"), "--store", url, "--pack", str(tmp_path / "nopack.json")),
        "cannot read",
    )
    assert_error(
        invoke(str(EXAMPLES / "45x-cell.yaml"), "--store", str(tmp_path / "no" / "such" / "dir.db")),
        "no ledger at",
    )
    assert_error(
        invoke(str(EXAMPLES / "45x-cell.yaml"), "--store", str(tmp_path / "empty.db")), "no ledger at"
    )


def test_cli_html_report(demo: tuple[str, Ledger], tmp_path: Path) -> None:
    url, led = demo
    report = tmp_path / "report.html"
    result = invoke(str(EXAMPLES / "30d-pack.yaml"), "--store", url, "--html", str(report))
    assert result.exit_code == 1
    page = report.read_text()
    assert page.startswith("<!DOCTYPE html>") and "<svg" in page and "</svg>" in page
    assert "<script" not in page and "<link" not in page  # self-contained
    row = page[page.index("critical minerals: qualifying content") :].split("</tr>")[0]
    assert '<span class="ko">fail</span>' in row and "<td>2025</td>" in row  # threshold year in its column
    assert 'class="conf-q"' in page  # the "?" parameters are highlighted
    pack = led.batch("US-PACK-002")
    assert pack is not None and pack.event_id in page


def test_cli_bundle_verifies_offline(chain: DemoChain, fresh: tuple[str, Ledger], tmp_path: Path) -> None:
    url, led = fresh
    out = tmp_path / "evidence.json"
    # no checkpoint yet and no operator key: says what to do
    assert_error(invoke(str(EXAMPLES / "45x-cell.yaml"), "--store", url, "--bundle", str(out)), "checkpoint")
    key = tmp_path / "operator.key"
    save_private_key(chain.operator_key, key, None)
    result = invoke(
        str(EXAMPLES / "45x-cell.yaml"), "--store", url, "--bundle", str(out), "--operator-key", str(key)
    )
    assert result.exit_code == 0, result.output
    report = verify_bundle(out.read_bytes(), led.operator_public_key)
    assert report.batch_id == "US-CELL-001"
    # several subject batches: one bundle each
    eu = tmp_path / "eu.json"
    result = invoke(str(EXAMPLES / "eu-recycled-cells-2025.yaml"), "--store", url, "--bundle", str(eu))
    assert result.exit_code == 3
    paths = bundle_paths(eu, ["US-CELL-001", "US-CELL-002"])
    assert [p.name for p in paths] == ["eu-US-CELL-001.json", "eu-US-CELL-002.json"]
    assert [verify_bundle(p.read_bytes(), led.operator_public_key).batch_id for p in paths] == [
        "US-CELL-001",
        "US-CELL-002",
    ]


# -- review fixes (issue 9) ------------------------------------------------------------------------------
def write_claim(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "claim.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "text",
    [
        "kind: 30d\nsubject: {batches: [US-PACK-001]}\nacquired: 2023-04-01\nplaced_in_service: 2023-04-17\n",
        "kind: macr\ncategory: battery-component\nsubject: {batches: [US-CELL-001]}\nsale_year: 2025\n"
        "taxable_year_start: 2025-01-01\n",
        "kind: 30d\nsubject: {batches: [US-PACK-001]}\nacquired: 2023-04-01\nplaced_in_service: 2023-04-17\n"
        "asserted: {credit_usd: 7500}\n",
    ],
)
def test_review_b3_a_rule_not_in_force_is_not_applicable_exit_3(
    demo: tuple[str, Ledger], tmp_path: Path, text: str
) -> None:
    url, led = demo
    path = write_claim(tmp_path, text)
    r = audit(led, load_claim(path))
    # the failed in-force test is the reason it does not apply, not a failure of the claim
    assert r.status == "not_applicable"
    assert not r.finding.requirements[0].passed
    if "asserted" in text:
        assert any("asserted amounts not checked" in n for n in r.finding.notes)
    assert invoke(str(path), "--store", url).exit_code == 3


def test_review_b13_pack_assembled_after_placed_in_service_fails(
    demo: tuple[str, Ledger], tmp_path: Path
) -> None:
    url, led = demo
    path = write_claim(
        tmp_path,
        "kind: 30d\nsubject: {batches: [US-PACK-001]}\nacquired: 2024-12-31\nplaced_in_service: 2024-12-31\n",
    )
    r = audit(led, load_claim(path))
    check = req(r, "US-PACK-001 assembled on or before the vehicle was placed in service")
    assert not check.passed and check.value == "2025-04-14"  # the pack event's date
    assert r.status == "fail" and r.finding.amounts["credit_usd"] == 0
    assert invoke(str(path), "--store", url).exit_code == 1


def test_review_b5_45x_after_2025_links_the_ledger_macr(demo: tuple[str, Ledger]) -> None:
    _, led = demo
    r = run(led, "45x-cell.yaml", sale_year=2027, asserted={})
    # the cells' MACR from the ledger, (1,474,000 - 140,000) / 1,474,000 = 0.905 >= 0.65 (2027): linked
    macr = req(r, "no material assistance from a prohibited foreign entity (MACR battery-component)")
    assert macr.passed and close(
        Decimal(str(macr.value)), (CELL_INPUTS - PFE_IN_CAM) / CELL_INPUTS, "0.00000001"
    )
    assert macr.threshold == Decimal("0.65")
    # the taxpayer's status is not in the claim: a named unconfirmed requirement ("?", warned)
    taxpayer = req(r, "taxpayer is neither a specified foreign entity nor a foreign-influenced entity")
    assert taxpayer.value == "not stated" and taxpayer.confidence == "?"
    assert "unconfirmed.taxpayer_not_prohibited" in {p.name for p in r.finding.unconfirmed_parameters()}
    assert r.status == "pass" and r.finding.amounts["credit_usd"] == 634550
    assert any("calendar year" in x for x in r.finding.warnings)
    ok = run(led, "45x-cell.yaml", sale_year=2027, prohibited_foreign_entity_taxpayer=False, asserted={})
    assert ok.status == "pass" and ok.finding.amounts["credit_usd"] == 634550
    assert "unconfirmed.taxpayer_not_prohibited" not in {p.name for p in ok.finding.unconfirmed_parameters()}
    barred = run(led, "45x-cell.yaml", sale_year=2027, prohibited_foreign_entity_taxpayer=True, asserted={})
    assert barred.status == "fail" and barred.finding.amounts["credit_usd"] == 0
    # a fiscal year that began 2025-07-01 is outside the P.L. 119-21 rules: no conditions added
    early = run(led, "45x-cell.yaml", sale_year=2026, taxable_year_start="2025-07-01", asserted={})
    assert early.status == "pass"
    assert not any("prohibited foreign entity" in x.name for x in early.finding.requirements)


def test_q3_supplier_level_pfe_attribution(demo: tuple[str, Ledger]) -> None:
    _, led = demo
    look_through = run(led, "macr-cell.yaml")
    assert "macr.pfe_cost_attribution" in {p.name for p in look_through.finding.unconfirmed_parameters()}
    pack = parse_pack(
        json.dumps(
            {
                "extends": "default",
                "macr": {"pfe_cost_attribution": {"value": "supplier", "citation": "t", "confidence": "?"}},
            }
        )
    )
    supplier = audit(led, load_claim(EXAMPLES / "macr-cell.yaml"), pack=pack)
    # the Korean cathode maker is not a PFE: at supplier level none of the cells' inputs is PFE cost
    assert supplier.finding.amounts["pfe_cost_usd"] == 0 and supplier.finding.amounts["macr"] == 1
    assert look_through.finding.amounts["pfe_cost_usd"] == (PFE_IN_CAM * CELL_SHARE).quantize(CENT)


def test_q6_other_reading_is_refused_by_the_audit(demo: tuple[str, Ledger]) -> None:
    _, led = demo
    r = run(led, "30d-pack.yaml")
    assert {"cv30d.component_incremental_value", "cv30d.traced_chain_reading"} <= {
        p.name for p in r.finding.unconfirmed_parameters()
    }
    pack = parse_pack(
        json.dumps(
            {
                "extends": "default",
                "cv30d": {
                    "component_incremental_value": {
                        "value": "with_constituents",
                        "citation": "t",
                        "confidence": "?",
                    }
                },
            }
        )
    )
    with pytest.raises(AuditError, match="with_constituents"):
        audit(led, load_claim(EXAMPLES / "30d-pack.yaml"), pack=pack)


def test_review_b4_every_processing_step_is_kept() -> None:
    from datetime import datetime

    from ledger.audit import processing_chains, processing_share, qualifying_part
    from ledger.provenance import BatchNode
    from ledger.taxrules import load_pack
    from schemas.events import Element, Kind

    def node(b: str, kind: Kind, country: str, kg: float, value: float | None, inputs: Any = ()) -> BatchNode:
        return BatchNode(
            b, "e" + b, kind, "f" + b, country, False, datetime(2025, 1, 1), kg, {Element.NI: 100.0}, value,
            tuple(inputs), {Element.NI: 100.0}, None,
        )  # fmt: skip

    # the review's repro: mined in Indonesia, smelted in Indonesia, finished in Korea (no values)
    nodes = {
        "o": node("o", Kind.BATCH_EXTRACTED, "ID", 1000, None),
        "m": node("m", Kind.BATCH_PROCESSED, "ID", 200, None, [("o", 1000)]),
        "s": node("s", Kind.BATCH_PROCESSED, "KR", 450, None, [("m", 200)]),
    }
    [(chain, kg)] = processing_chains(nodes, "s")[Element.NI].items()
    assert kg == 100.0
    assert chain[:3] == ("mined", "ID", "") and [c for c, _ in chain[3]] == ["ID", "KR"]
    pack = load_pack()
    day = datetime(2025, 7, 1).date()
    # without values the two steps weigh alike: half the processing in an FTA country (Korea)
    assert processing_share(pack, chain[3], day) == 0.5
    # with values: Indonesian smelting added 8,000 USD, Korean finishing 2,000 USD
    valued = {
        "o": node("o", Kind.BATCH_EXTRACTED, "ID", 1000, 1000.0),
        "m": node("m", Kind.BATCH_PROCESSED, "ID", 200, 9000.0, [("o", 1000)]),
        "s": node("s", Kind.BATCH_PROCESSED, "KR", 450, 11000.0, [("m", 200)]),
    }
    [(chain, _kg)] = processing_chains(valued, "s")[Element.NI].items()
    assert [(c, round(v, 6)) for c, v in chain[3]] == [("ID", 80.0), ("KR", 20.0)]  # USD per kg Ni
    share = processing_share(pack, chain[3], day)
    assert share is not None and abs(share - 0.2) < 1e-12
    # no longer 100% qualifying (it was, keyed on the last country): not under either reading whole
    assert qualifying_part(False, share, None, "whole_chain") == 0.0
    assert abs(qualifying_part(False, share, None, "value_added") - 0.2) < 1e-12
    # a chain processed only in the US and FTA countries qualifies whole under both readings
    assert (
        qualifying_part(False, 1.0, None, "whole_chain")
        == 1.0
        == qualifying_part(False, 1.0, None, "value_added")
    )
    assert qualifying_part(True, 0.0, None, "whole_chain") == 1.0  # extracted in an FTA country


def test_b4_safe_harbor_counts_a_chain_with_half_its_processing_value_in_fta_countries() -> None:
    from datetime import date

    from ledger.taxrules import load_pack
    from ledger.taxrules.cv30d import MineralChain, critical_mineral_content

    chain = MineralChain(
        "ni: mined ID, processed ID > KR",
        total_value_usd=Decimal(100),
        traced_qualifying_value_usd=Decimal(0),
        extraction_value_added_share=Decimal(0),
        processing_value_added_share=Decimal("0.5"),
    )
    inside = critical_mineral_content(load_pack(), [chain], report_date=date(2025, 6, 30))
    outside = critical_mineral_content(load_pack(), [chain], report_date=date(2027, 1, 1))
    assert inside.content == 1 and outside.content == 0


def test_review_b11_eu_period_before_18_august(demo: tuple[str, Ledger], tmp_path: Path) -> None:
    _, led = demo
    claim = load_claim(EXAMPLES / "eu-recycled-cells-2025.yaml")
    data = claim.model_dump(mode="python")
    data["subject"] = {**data["subject"], "period_end": "2025-04-30"}
    r = audit(led, parse_claim(data))
    # the cell lots are dated April 2025: the period keeps them; outside it, none is found
    assert r.status == "not_applicable" and len(r.batches) >= 1
    data["subject"] = {**data["subject"], "period_start": "2025-09-01", "period_end": "2025-12-31"}
    with pytest.raises(AuditError, match="no cell batches"):
        audit(led, parse_claim(data))
    data["subject"] = {**data["subject"], "period_start": "2025-09-01", "period_end": "2026-01-31"}
    with pytest.raises(ClaimError, match="must lie within 2025"):
        parse_claim(data)


def test_48e_claim_with_only_a_year_takes_the_strictest_value(demo: tuple[str, Ledger]) -> None:
    _, led = demo
    r = run(led, "48e-storage.yaml", construction_start=None, construction_year=2025)
    assert r.finding.amounts["threshold"] == Decimal("0.45") and r.status == "pass"
    assert any("2025-06-16" in n for n in r.finding.notes)
    with pytest.raises(ClaimError, match="construction_start"):
        run(led, "48e-storage.yaml", construction_start=None)


def test_45x_integrated_component_facts_from_the_claim(demo: tuple[str, Ledger]) -> None:
    _, led = demo
    common = {
        "sale_year": 2027,
        "taxable_year_start": "2027-01-01",
        "prohibited_foreign_entity_taxpayer": False,
    }
    r = run(led, "45x-cell.yaml", asserted={}, integrated=True, integrated_same_facility=False, **common)
    assert not req(r, "integrated component counts as sold").passed and r.status == "fail"
    r = run(
        led, "45x-cell.yaml", asserted={}, integrated=True, integrated_same_facility=True,
        integrated_us_primary_share="0.9", **common,
    )  # fmt: skip
    assert req(r, "integrated component counts as sold").passed and r.status == "pass"
