"""Signed events shared by the intake unit tests and the Kafka end-to-end tests."""

from __future__ import annotations

from batteryledger.sample import DemoChain
from schemas.signing import sign_object


def family(chain: DemoChain, tag: str) -> tuple[bytes, bytes]:
    """(parent, child) signed by one facility (Atacama extracts and processes): no custody step between."""
    fac = chain.facilities["mine-cl-atacama"]
    base = {"spec": "batteryledger/1", "facility_id": fac.facility_id}
    parent = dict(
        base,
        kind="batch.extracted",
        time="2025-03-01T00:00:00Z",
        outputs=[
            {
                "batch_id": f"CL-ORE-{tag}",
                "material": "lithium_brine_concentrate",
                "kg": "1000",
                "contained_kg": {"li": "100"},
            }
        ],
    )
    child = dict(
        base,
        kind="batch.processed",
        time="2025-03-02T00:00:00Z",
        inputs=[{"batch_id": f"CL-ORE-{tag}", "kg": "500"}],
        outputs=[
            {
                "batch_id": f"CL-LI2CO3-{tag}",
                "material": "lithium_carbonate",
                "kg": "200",
                "contained_kg": {"li": "40"},
            }
        ],
    )
    return sign_object(parent, fac.key)[0], sign_object(child, fac.key)[0]
