"""Partition assignment that keeps the sequencer's host free of verify work while another worker can take it.

Faust's assignor balances each group of co-partitioned topics on its own. With two workers and the
default two raw partitions, the worker that gets the single material-events-verified partition (the
sequencer, which appends every event) also gets half of material-events (half of the verifies), while
the other worker verifies the other half and then waits: measured, two workers were barely faster than
one (issue 11). This assignor starts from Faust's sticky assignment and then moves every other active
partition off the verified partition's holder onto the remaining workers, each to the one holding the
fewest partitions of that topic. With one worker nothing moves: it does everything.

The result is deterministic (members in sorted order), so whichever member leads the group computes
the same plan, and it stays sticky: the verified partition is never moved by this pass, and the raw
partitions it hands out are what Faust's next pass starts from.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from typing import Any

from faust.assignor import PartitionAssignor

__all__ = ["dedicated_sequencer_assignor", "move_off_sequencer_host"]


def move_off_sequencer_host(assignments: MutableMapping[str, Any], verified_topic: str) -> None:
    """Move every active partition but the verified one off its holder, in place.

    `assignments` maps member id to a Faust ``ClientAssignment`` (``actives``: topic -> partitions).
    A member is a candidate for a topic when Faust listed the topic in its actives, i.e. when it
    subscribes to it. Nothing moves when the holder is the only subscriber of a topic.
    """
    holders = sorted(m for m, a in assignments.items() if 0 in (a.actives.get(verified_topic) or ()))
    if not holders or len(assignments) < 2:
        return
    host = holders[0]
    mine = assignments[host].actives
    for topic in sorted(mine):
        if topic == verified_topic or not mine[topic]:
            continue
        takers = sorted(m for m, a in assignments.items() if m != host and topic in a.actives)
        if not takers:
            continue
        for partition in sorted(mine[topic]):
            taker = min(takers, key=lambda m: (len(assignments[m].actives[topic]), m))
            assignments[taker].actives[topic] = sorted([*assignments[taker].actives[topic], partition])
        mine[topic] = []


def dedicated_sequencer_assignor(verified_topic: str) -> type[PartitionAssignor]:
    """Faust's PartitionAssignor with :func:`move_off_sequencer_host` applied for `verified_topic`."""

    class DedicatedSequencerAssignor(PartitionAssignor):
        # The hook Faust calls on the complete assignment, before it is encoded for the members (its
        # own body adds global-table standbys; this app has no tables). Pinned by
        # tests/unit/test_assignor.py, which runs the real _perform_assignment.
        def _global_table_standby_assignments(
            self, assignments: MutableMapping[str, Any], partitions_by_topic: Mapping[str, int]
        ) -> MutableMapping[str, Any]:
            out = super()._global_table_standby_assignments(assignments, partitions_by_topic)
            move_off_sequencer_host(out, verified_topic)
            return out

    return DedicatedSequencerAssignor
