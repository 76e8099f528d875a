"""The dedicated-sequencer assignment, run through Faust's real assignor code (no broker needed).

Each test plays several rebalances: every member reports the assignment it was given last time (as a
Faust member does), so the stickiness of Faust's copartitioned assignor and this project's pass on top
of it are exercised together.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiokafka.coordinator.protocol import ConsumerProtocolMemberMetadata
from faust.assignor.client_assignment import ClientAssignment, ClientMetadata

from streams.app import create_app
from streams.assignor import move_off_sequencer_host
from streams.settings import Settings

RAW, VERIFIED = "material-events", "material-events-verified"


class Cluster:
    """What the assignor asks of aiokafka's ClusterMetadata: the partitions of a topic."""

    def __init__(self, partitions: dict[str, int]) -> None:
        self.partitions = partitions

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        n = self.partitions.get(topic)
        return set(range(n)) if n else None


def _assignor(tmp_path: Path, *, dedicated: bool = True) -> Any:
    settings = Settings(data_dir=tmp_path / "faust", dedicated_sequencer=dedicated)
    return create_app(settings, install=False).assignor


def _rebalance(
    assignor: Any, cluster: Cluster, previous: dict[str, ClientAssignment]
) -> dict[str, dict[str, list[int]]]:
    """One group rebalance; returns each member's Kafka-protocol assignment (topic -> partitions)."""
    metadata = {
        member: ConsumerProtocolMemberMetadata(
            assignor.version,
            [RAW, VERIFIED],
            ClientMetadata(
                assignment=assignment, url=f"http://{member}:6066", changelog_distribution={}
            ).dumps(),
        )
        for member, assignment in previous.items()
    }
    result = assignor.assign(cluster, metadata)
    out: dict[str, dict[str, list[int]]] = {}
    for member, protocol in result.items():
        out[member] = {topic: sorted(parts) for topic, parts in protocol.assignment}
        previous[member] = ClientMetadata.loads(assignor._decompress(protocol.user_data)).assignment
    return out


def _members(n: int) -> dict[str, ClientAssignment]:
    return {f"worker-{i}": ClientAssignment(actives={}, standbys={}) for i in range(n)}


def _check_complete(plan: dict[str, dict[str, list[int]]], cluster: Cluster) -> None:
    for topic, n in cluster.partitions.items():
        given = sorted(p for parts in plan.values() for p in parts.get(topic, []))
        assert given == list(range(n)), f"{topic}: {given}"


@pytest.mark.parametrize("raw_partitions", [1, 2, 4, 6])
@pytest.mark.parametrize("workers", [2, 3])
def test_the_sequencer_host_verifies_nothing_while_another_worker_can(
    tmp_path: Path, raw_partitions: int, workers: int
) -> None:
    assignor = _assignor(tmp_path)
    cluster = Cluster({RAW: raw_partitions, VERIFIED: 1})
    previous = _members(workers)
    plans = [_rebalance(assignor, cluster, previous) for _ in range(3)]
    for plan in plans:
        _check_complete(plan, cluster)
        (host,) = [m for m, parts in plan.items() if parts.get(VERIFIED)]
        assert plan[host].get(RAW, []) == [], plan
        shares = [len(parts.get(RAW, [])) for m, parts in plan.items() if m != host]
        assert max(shares) - min(shares) <= 1, plan
    assert plans[1] == plans[2], "a second rebalance with nothing changed must not move partitions"


def test_a_lone_worker_still_does_everything(tmp_path: Path) -> None:
    assignor = _assignor(tmp_path)
    cluster = Cluster({RAW: 2, VERIFIED: 1})
    plan = _rebalance(assignor, cluster, _members(1))
    assert plan == {"worker-0": {RAW: [0, 1], VERIFIED: [0]}}


def test_when_a_verifier_leaves_its_partitions_go_to_the_one_left_not_to_the_sequencer(
    tmp_path: Path,
) -> None:
    assignor = _assignor(tmp_path)
    cluster = Cluster({RAW: 4, VERIFIED: 1})
    previous = _members(3)
    plan = _rebalance(assignor, cluster, previous)
    (host,) = [m for m, parts in plan.items() if parts.get(VERIFIED)]
    gone = next(m for m in plan if m != host)
    del previous[gone]
    after = _rebalance(assignor, cluster, previous)
    _check_complete(after, cluster)
    assert after[host] == {RAW: [], VERIFIED: [0]}, "the sequencer stays where it was, verifying nothing"
    (other,) = [m for m in after if m != host]
    assert after[other][RAW] == [0, 1, 2, 3]


def test_faust_alone_gives_the_sequencer_host_half_the_verifies(tmp_path: Path) -> None:
    """What the pass corrects (and a check that the tests above would see it missing)."""
    assignor = _assignor(tmp_path, dedicated=False)
    cluster = Cluster({RAW: 2, VERIFIED: 1})
    plan = _rebalance(assignor, cluster, _members(2))
    (host,) = [m for m, parts in plan.items() if parts.get(VERIFIED)]
    assert len(plan[host][RAW]) == 1


def test_the_setting_picks_the_assignor(tmp_path: Path) -> None:
    assert type(_assignor(tmp_path)).__name__ == "DedicatedSequencerAssignor"
    assert type(_assignor(tmp_path, dedicated=False)).__name__ == "PartitionAssignor"
    assert Settings.from_env({"BATTERYLEDGER_DEDICATED_SEQUENCER": "0"}).dedicated_sequencer is False
    assert Settings().to_env()["BATTERYLEDGER_DEDICATED_SEQUENCER"] == "1"


def test_move_off_sequencer_host_leaves_topics_nobody_else_subscribes_to() -> None:
    plan = {
        "a": ClientAssignment(actives={VERIFIED: [0], RAW: [0], "only-a": [0, 1]}, standbys={}),
        "b": ClientAssignment(actives={VERIFIED: [], RAW: [1]}, standbys={}),
    }
    move_off_sequencer_host(plan, VERIFIED)
    assert plan["a"].actives == {VERIFIED: [0], RAW: [], "only-a": [0, 1]}
    assert plan["b"].actives == {VERIFIED: [], RAW: [0, 1]}
