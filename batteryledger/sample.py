"""A realistic multi-tier demo supply chain, as signed events.

Mines in Australia, Chile, the DR Congo, Indonesia, Mexico, Canada and the US; a US lithium refinery
and a Chinese (FEOC) nickel/cobalt refinery; cathode active material made in Korea; anode material, cells,
modules and packs in the US; a Canadian recycler whose recovered black mass goes back into US refining
and then into a second cathode lot. Plus the bad events a real ledger must turn away.

Used by `batteryledger demo`, the tests and the benchmarks. Quantities are plausible, not real data.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from schemas.events import Kind
from schemas.signing import generate_key, key_id, public_key_b64, sign_object

SPEC = "batteryledger/1"
REGISTERED_AT = datetime(2024, 1, 1, tzinfo=UTC)


def ts(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Facility:
    facility_id: str
    legal_entity: str
    country: str
    roles: list[Kind]
    feoc: bool = False
    pfe: bool = False
    key: Ed25519PrivateKey = field(default_factory=generate_key)


@dataclass
class SignedEvent:
    raw: bytes
    event_id: str
    facility_id: str
    kind: str
    label: str = ""


PRODUCER_ROLES = [Kind.BATCH_SHIPPED, Kind.BATCH_RECEIVED, Kind.SUPPLIER_CERTIFIED, Kind.CORRECTION]


class ChainBuilder:
    """Builds signed events in time order: registry first, then the chain."""

    def __init__(
        self, operator_key: Ed25519PrivateKey, start: datetime = datetime(2025, 1, 6, tzinfo=UTC)
    ) -> None:
        self.operator_key = operator_key
        self.clock = start
        self.facilities: dict[str, Facility] = {}
        self.events: list[SignedEvent] = []
        self.batches: dict[str, dict[str, Any]] = {}

    def tick(self, hours: float = 6) -> str:
        self.clock += timedelta(hours=hours)
        return ts(self.clock)

    def _sign(self, obj: dict[str, Any], key: Ed25519PrivateKey, label: str = "") -> SignedEvent:
        raw, eid = sign_object(obj, key)
        ev = SignedEvent(raw, eid, obj["facility_id"], obj["kind"], label)
        self.events.append(ev)
        return ev

    def register(self, fac: Facility) -> SignedEvent:
        self.facilities[fac.facility_id] = fac
        obj = {
            "spec": SPEC,
            "kind": Kind.FACILITY_REGISTERED.value,
            "facility_id": "registry",
            "time": ts(REGISTERED_AT),
            "nonce": fac.facility_id,
            "subject_facility_id": fac.facility_id,
            "legal_entity": fac.legal_entity,
            "country": fac.country,
            "roles": sorted({r.value for r in [*fac.roles, *PRODUCER_ROLES]}),
            "attestation": {
                "feoc": fac.feoc,
                "prohibited_foreign_entity": fac.pfe,
                "as_of": ts(REGISTERED_AT),
                "evidence": "operator due diligence file " + fac.facility_id,
            },
            "key": {
                "key_id": key_id(fac.key.public_key()),
                "public_key": public_key_b64(fac.key.public_key()),
                "valid_from": ts(REGISTERED_AT),
            },
        }
        return self._sign(obj, self.operator_key, f"register {fac.facility_id}")

    def transform(
        self,
        facility_id: str,
        kind: Kind,
        outputs: Sequence[dict[str, Any]],
        inputs: Sequence[tuple[str, str]] = (),
        **extra: Any,
    ) -> SignedEvent:
        fac = self.facilities[facility_id]
        obj: dict[str, Any] = {
            "spec": SPEC,
            "kind": kind.value,
            "facility_id": facility_id,
            "time": self.tick(),
        }
        if inputs:
            obj["inputs"] = [{"batch_id": b, "kg": kg} for b, kg in inputs]
        obj["outputs"] = [dict(o) for o in outputs]
        obj.update(extra)
        for o in outputs:
            self.batches[o["batch_id"]] = dict(o, facility_id=facility_id)
        return self._sign(obj, fac.key, f"{kind.value} {outputs[0]['batch_id']}")

    def ship(self, batch_id: str, kg: str, from_id: str, to_id: str, value_usd: str | None = None) -> None:
        src, dst = self.facilities[from_id], self.facilities[to_id]
        shipped: dict[str, Any] = {
            "spec": SPEC,
            "kind": Kind.BATCH_SHIPPED.value,
            "facility_id": from_id,
            "time": self.tick(),
            "batch_id": batch_id,
            "kg": kg,
            "to_facility_id": to_id,
            "from_country": src.country,
            "to_country": dst.country,
        }
        if value_usd:
            shipped["value_usd"] = value_usd
        self._sign(shipped, src.key, f"ship {batch_id} {src.country}->{dst.country}")
        received = {
            "spec": SPEC,
            "kind": Kind.BATCH_RECEIVED.value,
            "facility_id": to_id,
            "time": self.tick(24 * 7),
            "batch_id": batch_id,
            "kg": kg,
            "from_facility_id": from_id,
        }
        self._sign(received, dst.key, f"receive {batch_id}")


def out(
    batch_id: str, material: str, kg: str, value_usd: str | None = None, **contained_and_more: str | int
) -> dict[str, Any]:
    """An output line: element masses as li=, ni=, co=, mn=, graphite=; other fields pass through."""
    elements = {k: v for k, v in contained_and_more.items() if k in ("li", "ni", "co", "mn", "graphite")}
    rest = {k: v for k, v in contained_and_more.items() if k not in elements}
    o: dict[str, Any] = {"batch_id": batch_id, "material": material, "kg": kg}
    if elements:
        o["contained_kg"] = elements
    if value_usd is not None:
        o["value_usd"] = value_usd
    o.update(rest)
    return o


@dataclass
class DemoChain:
    operator_key: Ed25519PrivateKey
    facilities: dict[str, Facility]
    registry_events: list[SignedEvent]
    chain_events: list[SignedEvent]
    bad_events: list[tuple[str, bytes, str]]  # (label, raw bytes, expected reason code)
    final_packs: list[str]
    expected_rejections: dict[str, int] = field(default_factory=dict)

    @property
    def good_events(self) -> list[SignedEvent]:
        return [*self.registry_events, *self.chain_events]


def demo_chain(operator_key: Ed25519PrivateKey | None = None) -> DemoChain:
    op = operator_key or generate_key()
    b = ChainBuilder(op)
    F = Facility
    E, P, M, C, MO, PA, R = (
        Kind.BATCH_EXTRACTED,
        Kind.BATCH_PROCESSED,
        Kind.MATERIAL_PRODUCED,
        Kind.CELLS_PRODUCED,
        Kind.MODULES_ASSEMBLED,
        Kind.PACKS_ASSEMBLED,
        Kind.BATCH_RECYCLED,
    )
    facilities = [
        F("mine-au-greenbushes", "Pilbara Spodumene Pty Ltd", "AU", [E]),
        F("mine-cl-atacama", "Salar Litio SpA", "CL", [E, P]),
        F("mine-cd-kolwezi", "Katanga Cobalt SARL", "CD", [E]),
        F("mine-id-sulawesi", "Sulawesi Nickel PT", "ID", [E]),
        F("mine-mx-molango", "Manganeso de Hidalgo SA", "MX", [E]),
        F("mine-ca-lac-des-iles", "Laurentian Graphite Inc", "CA", [E]),
        F("ref-us-kings-mountain", "Carolina Lithium Refining LLC", "US", [P]),
        F("ref-cn-ningbo", "Ningbo Nickel Cobalt Refining Co", "CN", [P], feoc=True, pfe=True),
        F("cam-kr-gwangyang", "Gwangyang Cathode Materials Co", "KR", [M]),
        F("anode-us-tennessee", "Volunteer Anode Materials LLC", "US", [P, M]),
        F("cell-us-georgia", "Peach State Cells LLC", "US", [C]),
        F("pack-us-michigan", "Great Lakes Pack Assembly LLC", "US", [MO, PA]),
        F("recycler-ca-ontario", "Ontario Battery Recovery Inc", "CA", [R]),
    ]
    reg = [b.register(f) for f in facilities]
    n_reg = len(b.events)
    # extraction
    b.transform(
        "mine-au-greenbushes",
        E,
        [out("AU-SPOD-001", "spodumene_concentrate", "100000", "120000", li="2800")],
        site="Greenbushes pit 3",
    )
    b.transform(
        "mine-cl-atacama", E, [out("CL-BRINE-001", "lithium_brine_concentrate", "60000", "30000", li="2100")]
    )
    b.transform("mine-cd-kolwezi", E, [out("CD-COHYD-001", "cobalt_hydroxide", "12000", "90000", co="4200")])
    b.transform(
        "mine-id-sulawesi",
        E,
        [out("ID-MHP-001", "mixed_hydroxide_precipitate", "50000", "300000", ni="20000", co="1000")],
    )
    b.transform("mine-mx-molango", E, [out("MX-MNORE-001", "manganese_ore", "30000", "9000", mn="9000")])
    b.transform(
        "mine-ca-lac-des-iles",
        E,
        [out("CA-FLAKE-001", "flake_graphite_concentrate", "25000", "20000", graphite="23500")],
    )
    # processing
    b.transform(
        "mine-cl-atacama",
        P,
        [out("CL-LC-001", "lithium_carbonate", "10000", "150000", li="1870", purity_pct="99.5")],
        inputs=[("CL-BRINE-001", "60000")],
        process="conversion",
    )
    b.ship("AU-SPOD-001", "100000", "mine-au-greenbushes", "ref-us-kings-mountain", "120000")
    b.transform(
        "ref-us-kings-mountain",
        P,
        [out("US-LIOH-001", "lithium_hydroxide", "14000", "210000", li="2300", purity_pct="99.5")],
        inputs=[("AU-SPOD-001", "100000")],
    )
    b.ship("CD-COHYD-001", "12000", "mine-cd-kolwezi", "ref-cn-ningbo", "90000")
    b.ship("ID-MHP-001", "50000", "mine-id-sulawesi", "ref-cn-ningbo", "300000")
    b.transform(
        "ref-cn-ningbo",
        P,
        [
            out("CN-NISO4-001", "nickel_sulfate", "85000", "510000", ni="18900"),
            out("CN-COSO4-001", "cobalt_sulfate", "22000", "160000", co="4600"),
        ],
        inputs=[("CD-COHYD-001", "12000"), ("ID-MHP-001", "50000")],
    )
    b.ship("MX-MNORE-001", "30000", "mine-mx-molango", "ref-us-kings-mountain", "9000")
    b.transform(
        "ref-us-kings-mountain",
        P,
        [out("US-MNSO4-001", "manganese_sulfate", "26000", "31000", mn="8500", purity_pct="99.8")],
        inputs=[("MX-MNORE-001", "30000")],
    )
    b.ship("CA-FLAKE-001", "25000", "mine-ca-lac-des-iles", "anode-us-tennessee", "20000")
    b.transform(
        "anode-us-tennessee",
        P,
        [
            out(
                "US-SPG-001",
                "spherical_purified_graphite",
                "21000",
                "90000",
                graphite="20900",
                purity_pct="99.95",
            )
        ],
        inputs=[("CA-FLAKE-001", "25000")],
        process="purification",
    )
    b.transform(
        "anode-us-tennessee",
        M,
        [
            out(
                "US-ANODE-001",
                "anode_active_material",
                "20000",
                "160000",
                graphite="19800",
                production_cost_usd="95000",
            )
        ],
        inputs=[("US-SPG-001", "21000")],
    )
    # cathode active material in Korea (an FTA country)
    for bid, kg, frm, val in [
        ("US-LIOH-001", "14000", "ref-us-kings-mountain", "210000"),
        ("CN-NISO4-001", "85000", "ref-cn-ningbo", "510000"),
        ("CN-COSO4-001", "22000", "ref-cn-ningbo", "160000"),
        ("US-MNSO4-001", "26000", "ref-us-kings-mountain", "31000"),
    ]:
        b.ship(bid, kg, frm, "cam-kr-gwangyang", val)
    b.transform(
        "cam-kr-gwangyang",
        M,
        [
            out(
                "KR-NMC811-001",
                "nmc811_cathode_active_material",
                "30000",
                "1300000",
                li="1150",
                ni="9400",
                co="1150",
                mn="1150",
                production_cost_usd="380000",
            )
        ],
        inputs=[
            ("US-LIOH-001", "7000"),
            ("CN-NISO4-001", "42500"),
            ("CN-COSO4-001", "11000"),
            ("US-MNSO4-001", "13000"),
        ],
    )
    b.ship("KR-NMC811-001", "30000", "cam-kr-gwangyang", "cell-us-georgia", "1300000")
    b.ship("US-ANODE-001", "20000", "anode-us-tennessee", "cell-us-georgia", "160000")
    b.ship("CL-LC-001", "2000", "mine-cl-atacama", "cell-us-georgia", "30000")
    # cells in the US, 2% scrap goes to the recycler as pre-consumer feed
    b.transform(
        "cell-us-georgia",
        C,
        [
            out(
                "US-CELL-001",
                "nmc_prismatic_cell",
                "98000",
                "4200000",
                li="1480",
                ni="9200",
                co="1120",
                mn="1120",
                graphite="17400",
                units=49000,
                kwh="18130",
                max_discharge_kw="36260",
                volume_l="46000",
                production_cost_usd="2900000",
            ),
            out(
                "US-SCRAP-001",
                "cell_production_scrap",
                "2000",
                "20000",
                li="30",
                ni="190",
                co="23",
                mn="23",
                graphite="350",
            ),
        ],
        inputs=[("KR-NMC811-001", "30000"), ("US-ANODE-001", "18000"), ("CL-LC-001", "2000")],
    )
    b.ship("US-CELL-001", "98000", "cell-us-georgia", "pack-us-michigan", "4200000")
    b.transform(
        "pack-us-michigan",
        MO,
        [
            out(
                "US-MOD-001",
                "battery_module",
                "70000",
                "4600000",
                li="1057",
                ni="6571",
                co="800",
                mn="800",
                graphite="12428",
                units=1000,
                kwh="12950",
                max_discharge_kw="25900",
                production_cost_usd="4400000",
            )
        ],
        inputs=[("US-CELL-001", "70000")],
    )
    b.transform(
        "pack-us-michigan",
        PA,
        [
            out(
                "US-PACK-001",
                "ev_battery_pack",
                "80000",
                "5400000",
                li="1057",
                ni="6571",
                co="800",
                mn="800",
                graphite="12428",
                units=100,
                kwh="12950",
                max_discharge_kw="25900",
                production_cost_usd="5100000",
            )
        ],
        inputs=[("US-MOD-001", "70000")],
    )
    # recycling in Canada (North America): pre-consumer scrap + bought-in post-consumer black mass
    b.ship("US-SCRAP-001", "2000", "cell-us-georgia", "recycler-ca-ontario", "20000")
    b.transform(
        "recycler-ca-ontario",
        R,
        [
            out(
                "CA-BM-001",
                "black_mass",
                "6000",
                "90000",
                li="190",
                ni="1050",
                co="160",
                mn="140",
                graphite="1700",
            )
        ],
        inputs=[("US-SCRAP-001", "2000")],
        feed_consumer="pre",
        external_feed=[
            {
                "description": "end-of-life EV packs, Ontario collection",
                "consumer": "post",
                "kg": "9000",
                "contained_kg": {"li": "180", "ni": "900", "co": "150", "mn": "130", "graphite": "1500"},
                "origin_country": "CA",
            }
        ],
    )
    b.ship("CA-BM-001", "6000", "recycler-ca-ontario", "ref-us-kings-mountain", "90000")
    b.transform(
        "ref-us-kings-mountain",
        P,
        [
            out("US-RLIOH-001", "lithium_hydroxide", "1000", "15000", li="160", purity_pct="99.5"),
            out("US-RNISO4-001", "nickel_sulfate", "4400", "27000", ni="980"),
            out("US-RCOSO4-001", "cobalt_sulfate", "700", "5000", co="150"),
            out("US-RMNSO4-001", "manganese_sulfate", "400", "500", mn="125"),
        ],
        inputs=[("CA-BM-001", "6000")],
    )
    # a second cathode lot with recycled content, and the second line of cells / modules / packs
    for bid, kg, frm, val in [
        ("US-RLIOH-001", "1000", "ref-us-kings-mountain", "15000"),
        ("US-RNISO4-001", "4400", "ref-us-kings-mountain", "27000"),
        ("US-RCOSO4-001", "700", "ref-us-kings-mountain", "5000"),
        ("US-RMNSO4-001", "400", "ref-us-kings-mountain", "500"),
    ]:
        b.ship(bid, kg, frm, "cam-kr-gwangyang", val)
    b.transform(
        "cam-kr-gwangyang",
        M,
        [
            out(
                "KR-NMC811-002",
                "nmc811_cathode_active_material",
                "20000",
                "880000",
                li="730",
                ni="4950",
                co="520",
                mn="440",
                production_cost_usd="260000",
            )
        ],
        inputs=[
            ("US-LIOH-001", "3500"),
            ("CN-NISO4-001", "18000"),
            ("CN-COSO4-001", "1800"),
            ("US-MNSO4-001", "1000"),
            ("US-RLIOH-001", "1000"),
            ("US-RNISO4-001", "4400"),
            ("US-RCOSO4-001", "700"),
            ("US-RMNSO4-001", "400"),
        ],
    )
    b.ship("KR-NMC811-002", "20000", "cam-kr-gwangyang", "cell-us-georgia", "880000")
    b.transform(
        "cell-us-georgia",
        C,
        [
            out(
                "US-CELL-002",
                "nmc_prismatic_cell",
                "45000",
                "2300000",
                li="725",
                ni="4900",
                co="515",
                mn="430",
                graphite="1980",
                units=22500,
                kwh="8325",
                max_discharge_kw="16650",
                volume_l="21000",
                production_cost_usd="1600000",
            )
        ],
        inputs=[("KR-NMC811-002", "20000"), ("US-ANODE-001", "2000")],
    )
    b.ship("US-CELL-002", "45000", "cell-us-georgia", "pack-us-michigan", "2300000")
    b.transform(
        "pack-us-michigan",
        PA,
        [
            out(
                "US-PACK-002",
                "ev_battery_pack",
                "60000",
                "3100000",
                li="725",
                ni="4900",
                co="515",
                mn="430",
                graphite="1980",
                units=60,
                kwh="8325",
                max_discharge_kw="16650",
                production_cost_usd="2700000",
            )
        ],
        inputs=[("US-CELL-002", "45000")],
    )
    chain = b.events[n_reg:]
    bad = _bad_events(b, chain)
    return DemoChain(
        op,
        b.facilities,
        reg,
        chain,
        bad,
        ["US-PACK-001", "US-PACK-002"],
        {reason: sum(1 for _, _, r in bad if r == reason) for _, _, reason in bad},
    )


def _bad_events(b: ChainBuilder, chain: list[SignedEvent]) -> list[tuple[str, bytes, str]]:
    bad: list[tuple[str, bytes, str]] = []
    # 1. forged signature: a Chinese-refined batch relabelled as US-refined, signed with a stranger's key
    thief = generate_key()
    us = b.facilities["ref-us-kings-mountain"]
    forged = {
        "spec": SPEC,
        "kind": "batch.extracted",
        "facility_id": "mine-au-greenbushes",
        "time": ts(b.clock + timedelta(days=1)),
        "outputs": [out("AU-SPOD-FAKE", "spodumene_concentrate", "5000", li="140")],
    }
    raw, _ = sign_object(forged, thief)
    obj = json.loads(raw)
    obj["sig"]["key_id"] = key_id(b.facilities["mine-au-greenbushes"].key.public_key())
    bad.append(("forged signature", json.dumps(obj).encode(), "bad_signature"))
    # 2. overdrawn: the US refinery consumes more spodumene than the lot had
    over = {
        "spec": SPEC,
        "kind": "batch.processed",
        "facility_id": us.facility_id,
        "time": ts(b.clock + timedelta(days=2)),
        "inputs": [{"batch_id": "AU-SPOD-001", "kg": "5000"}],
        "outputs": [out("US-LIOH-X", "lithium_hydroxide", "700", li="110")],
    }
    bad.append(("overdrawn batch", sign_object(over, us.key)[0], "overdrawn"))
    # 3. unregistered facility
    rogue = generate_key()
    unreg = {
        "spec": SPEC,
        "kind": "batch.extracted",
        "facility_id": "mine-xx-unknown",
        "time": ts(b.clock + timedelta(days=3)),
        "outputs": [out("XX-ORE-001", "spodumene_concentrate", "1000", li="30")],
    }
    bad.append(("unregistered facility", sign_object(unreg, rogue)[0], "unknown_facility"))
    # 4. replay of an event already in the ledger (published again, byte for byte)
    bad.append(("replayed event", chain[0].raw, "duplicate"))
    # 5. malformed bytes
    bad.append(("malformed bytes", b'{"spec": "batteryledger/1", "kind": "batch.extr', "malformed"))
    return bad


def write_keys(chain: DemoChain, directory: Path) -> None:
    """Write every facility's key (PKCS#8, 0600) so the CLI can sign as them."""
    directory.mkdir(parents=True, exist_ok=True)
    for fac in chain.facilities.values():
        p = directory / f"{fac.facility_id}.key"
        if not p.exists():
            p.touch(mode=0o600)
            p.write_bytes(fac.key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))


def iter_raw(chain: DemoChain) -> Iterator[bytes]:
    for e in chain.good_events:
        yield e.raw
