"""Tax-credit and recycled-content rules: versioned rule data plus small pure functions.

Entry points:

- `pack`: `load_pack(path | None) -> RulePack`, the versioned, cited rule data (default pack shipped).
- `findings`: `Finding`, `Requirement`, `ParameterUse`: what every rule returns.
- `policy`: `AllOf`, `AnyOf`, `Threshold`, `Condition`: composable policies.
- `credit45x`: 45X advanced manufacturing production credit (battery components, critical minerals).
- `macr`: 45X material assistance cost ratio (prohibited foreign entities).
- `domestic_content`: 48E / 45Y domestic content bonus.
- `cv30d`: former 30D clean vehicle critical-mineral and battery-component requirements.
- `eu_recycled`: EU Battery Regulation 2023/1542 recycled content and its Battery Pass export.

Pure code: no I/O except reading rule-pack files. Money and fractions are Decimal.
"""

from __future__ import annotations

from ledger.taxrules.errors import InputError, PackError, PolicyError, TaxRuleError
from ledger.taxrules.findings import ClaimKind, CustodyModel, Finding, ParameterUse, Requirement
from ledger.taxrules.pack import RulePack, load_pack

__all__ = [
    "ClaimKind",
    "CustodyModel",
    "Finding",
    "InputError",
    "PackError",
    "ParameterUse",
    "PolicyError",
    "Requirement",
    "RulePack",
    "TaxRuleError",
    "load_pack",
]
