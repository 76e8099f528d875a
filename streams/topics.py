"""The Kafka topics of one ledger: names, partition counts, per-topic configs and size limits.

Everything that creates topics (``batteryledger topics create``, docker-compose's one-shot ``topics``
service, the test fixtures) builds them from :func:`ALL_TOPICS`, so partition counts cannot drift
between a producer, the Faust agents and the broker. Topics are always created explicitly: the broker
runs with ``auto.create.topics.enable=false``, because a topic auto-created with another partition count
than a Faust table's changelog makes the agent crash with PartitionsMismatch.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = [
    "ALL_TOPICS",
    "DEFAULT_PARTITIONS",
    "LEDGER_CHECKPOINTS",
    "MATERIAL_EVENTS",
    "MATERIAL_EVENTS_REJECTED",
    "MATERIAL_EVENTS_VERIFIED",
    "MAX_EVENT_BYTES",
    "PARTITIONS_ENV",
    "TOPIC_MAX_MESSAGE_BYTES",
    "Replication",
    "TopicConfigError",
    "TopicSpec",
    "partitions_from_env",
    "replication_for",
]

#: Raw signed events from plant systems. Key = facility id (the CloudEvents ``source``), so one
#: facility's events stay in order on one partition while verification scales out by partition.
MATERIAL_EVENTS = "material-events"
#: Events that passed schema, signature and key checks. ONE partition: the single sequencer reads it
#: as the total order of the ledger.
MATERIAL_EVENTS_VERIFIED = "material-events-verified"
#: Original bytes of refused events plus a stable reason code and detail (headers). One partition.
MATERIAL_EVENTS_REJECTED = "material-events-rejected"
#: Signed tree heads (C2SP checkpoints) for outside witnesses. One partition, in publication order.
LEDGER_CHECKPOINTS = "ledger-checkpoints"

#: Environment variable with the partition count of ``material-events`` (the verify stage's parallelism).
PARTITIONS_ENV = "BATTERYLEDGER_PARTITIONS"
DEFAULT_PARTITIONS = 2

#: Largest event (canonical JSON bytes, signature included) the ledger accepts. A real material event
#: with many inputs, element masses and a signature is a few KiB; 64 KiB leaves room for large
#: transformations while bounding what one event can cost the verifier, the store and every proof
#: reader. Larger events are rejected by the verify agent with a reason code.
MAX_EVENT_BYTES = 64 * 1024

#: Topic ``max.message.bytes``: deliberately well above MAX_EVENT_BYTES (1 MiB, the size the broker's
#: ``message.max.bytes`` default also allows). An oversized event must still reach our verifier, which
#: rejects it with a reason the plant can read on ``material-events-rejected``; were the broker to
#: refuse it, the plant would only see a produce error and the ledger no trace of the attempt.
TOPIC_MAX_MESSAGE_BYTES = 1024 * 1024

#: Keep forever: the verified stream is the ledger's input order and checkpoints are what witnesses
#: compare; neither may expire before a slow sequencer or witness has read it.
_KEEP_FOREVER = {"retention.ms": "-1"}


class TopicConfigError(ValueError):
    """A topic setting given by the user (environment, CLI flag) is unusable."""


@dataclass(frozen=True)
class TopicSpec:
    """One topic as we create it: name, partition count and topic-level configs (strings, as Kafka)."""

    name: str
    partitions: int
    config: Mapping[str, str] = field(default_factory=dict)

    def renamed(self, name: str) -> TopicSpec:
        """The same topic under another name (tests isolate themselves with unique names)."""
        return TopicSpec(name=name, partitions=self.partitions, config=dict(self.config))


def partitions_from_env(environ: Mapping[str, str] | None = None) -> int:
    """Partition count of ``material-events`` from BATTERYLEDGER_PARTITIONS, default 2."""
    env = os.environ if environ is None else environ
    raw = env.get(PARTITIONS_ENV, "").strip()
    if not raw:
        return DEFAULT_PARTITIONS
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise TopicConfigError(
            f"{PARTITIONS_ENV}={raw!r} is not a positive whole number: set it to e.g. "
            f"{DEFAULT_PARTITIONS} or unset it"
        )
    return value


def ALL_TOPICS(partitions: int | None = None) -> list[TopicSpec]:
    """Every topic of a ledger; ``partitions`` (default: from the environment) is material-events' count."""
    if partitions is None:
        partitions = partitions_from_env()
    if partitions < 1:
        raise TopicConfigError(f"partitions must be at least 1, got {partitions}")
    size = {"max.message.bytes": str(TOPIC_MAX_MESSAGE_BYTES)}
    return [
        TopicSpec(MATERIAL_EVENTS, partitions, dict(size)),
        TopicSpec(MATERIAL_EVENTS_VERIFIED, 1, {**size, **_KEEP_FOREVER}),
        TopicSpec(MATERIAL_EVENTS_REJECTED, 1, dict(size)),
        TopicSpec(LEDGER_CHECKPOINTS, 1, {**size, **_KEEP_FOREVER}),
    ]


@dataclass(frozen=True)
class Replication:
    """How many copies of each topic a cluster keeps, and how many must have a write before acks=all.

    A cluster of 3 or more brokers: replication factor 3, ``min.insync.replicas`` 2, unclean leader
    election off. A write the producers (acks=all, idempotent) see acknowledged is then on 2 brokers at
    least, one broker may die without losing or blocking anything, and with 2 of 3 gone producers get
    NotEnoughReplicas errors instead of a write that one more crash would lose. One or two brokers:
    every broker holds a copy and one copy suffices (a demo or a developer's machine, no redundancy).
    """

    brokers: int
    replication_factor: int
    min_insync_replicas: int

    @property
    def config(self) -> dict[str, str]:
        return {
            "min.insync.replicas": str(self.min_insync_replicas),
            "unclean.leader.election.enable": "false",
        }

    def describe(self) -> str:
        return (
            f"{self.brokers} broker{'s' if self.brokers != 1 else ''}: replication factor "
            f"{self.replication_factor}, min.insync.replicas {self.min_insync_replicas}, "
            "unclean leader election off"
        )


def replication_for(brokers: int) -> Replication:
    """The replication a cluster of ``brokers`` gets (see :class:`Replication`)."""
    if brokers < 1:
        raise TopicConfigError(f"a cluster has at least 1 broker, got {brokers}")
    if brokers >= 3:
        return Replication(brokers, 3, 2)
    return Replication(brokers, brokers, 1)
