from __future__ import annotations

import json
from decimal import Decimal

import pytest
from pydantic import ValidationError

from ledger.taxrules.findings import (
    ClaimKind,
    Comparison,
    CustodyModel,
    Finding,
    ParameterUse,
    Requirement,
    decimal_literal,
    dumps_json,
    make_finding,
    weakest,
)


def req(passed: bool) -> Requirement:
    return Requirement(
        name="r", passed=passed, value=Decimal("0.6"), comparison=Comparison.GE, citation="c", confidence="P"
    )


def finding(*requirements: Requirement, applicable: bool = True) -> Finding:
    return make_finding(
        ClaimKind.MACR_45X,
        requirements,
        parameters_used=[
            ParameterUse(name="macr.equality_passes", value="true", citation="c", confidence="?")
        ],
        pack_id="p",
        pack_version="1",
        amounts={"macr": Decimal("0.6")},
        events=["e1", "e2", "e1"],
        inputs={"sale_year": 2026, "pfe_cost": Decimal("40.0"), "missing": None},
        applicable=applicable,
    )


def test_status_follows_requirements() -> None:
    assert finding(req(True), req(True)).status == "pass"
    assert finding(req(True), req(False)).status == "fail"
    assert finding(req(False), applicable=False).status == "not_applicable"


def test_nothing_passes_vacuously() -> None:
    assert finding().status == "fail"
    with pytest.raises(ValidationError, match="at least one requirement"):
        Finding(
            claim_kind=ClaimKind.CREDIT_45X,
            status="pass",
            requirements=(),
            amounts={},
            parameters_used=(),
            custody_model=CustodyModel.MASS_BALANCE,
            events=(),
            pack_id="p",
            pack_version="1",
        )


def test_fail_status_needs_a_failed_requirement() -> None:
    with pytest.raises(ValidationError, match="failed requirement"):
        Finding(
            claim_kind=ClaimKind.CREDIT_45X,
            status="fail",
            requirements=(req(True),),
            amounts={},
            parameters_used=(),
            custody_model=CustodyModel.MASS_BALANCE,
            events=(),
            pack_id="p",
            pack_version="1",
        )


def test_finding_serialises_losslessly() -> None:
    f = finding(req(True))
    data = json.loads(f.model_dump_json())
    assert data["passed"] is True
    assert data["amounts"] == {"macr": "0.6"}
    assert data["events"] == ["e1", "e2"]  # duplicates dropped, order kept
    assert data["inputs"] == {"sale_year": "2026", "pfe_cost": "40.0"}
    assert data["custody_model"] == "mass_balance"
    assert [p["name"] for p in data["parameters_used"]] == ["macr.equality_passes"]
    assert f.unconfirmed_parameters()[0].name == "macr.equality_passes"


def test_weakest_confidence() -> None:
    assert weakest(["P", "S"]) == "S"
    assert weakest(["P", "?", "S"]) == "?"
    assert weakest(["P"]) == "P"


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (Decimal("3750.00"), "3750"),
        (Decimal("0.600"), "0.6"),
        (Decimal("1E+2"), "100"),
        (Decimal("-0.0"), "0"),
        (Decimal("0.000001"), "0.000001"),
    ],
)
def test_decimal_literal(value: Decimal, text: str) -> None:
    assert decimal_literal(value) == text


def test_decimal_literal_refuses_nan() -> None:
    with pytest.raises(ValueError):
        decimal_literal(Decimal("NaN"))


def test_dumps_json_writes_decimals_as_numbers() -> None:
    text = dumps_json({"a": Decimal("0.1"), "b": [True, None, 3, 'x"y'], "c": {"d": Decimal("2.50")}})
    assert text == '{"a": 0.1, "b": [true, null, 3, "x\\"y"], "c": {"d": 2.5}}'
    assert json.loads(text, parse_float=Decimal)["a"] == Decimal("0.1")
