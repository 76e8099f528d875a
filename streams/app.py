"""The Faust app of one ledger, built from Settings (no module-level app: tests and workers build their own).

    >>> app = create_app(Settings.from_env())
    >>> app.main()  # or streams.worker.run_worker(settings)

What is configured and why (see shared/kafka.md for the traps):

* ``store="memory://"`` and no tables: all state lives in the ledger store, so no changelog topics exist
  that could be auto-created with the wrong partition count.
* ``topic_disable_leader``: no ``__assignor-__leader`` topic; the broker has topic auto-creation off.
* ``topic_allow_declare=False``: topics are created explicitly (``batteryledger topics create``).
* ``broker_session_timeout`` from the settings (6 s by default) so a dead worker's partitions move fast
  and a group join takes seconds, heartbeat at a third of it.
* ``processing_guarantee="at_least_once"``: Faust's exactly-once has open bugs; the ledger is idempotent
  by event id and stores the consumed offset in the append transaction.
* producers ``acks=all`` and idempotent (:class:`IdempotentProducer`): a retried send after a leader
  change is never a second record on the verified or rejected topic.
* the consumer (:class:`streams.lean.FastDrainConsumer`): Faust's, handing each fetched message to
  the streams without four tasks per message, and asking the broker for fuller fetches
  (``fetch_min_bytes`` / ``fetch_wait_s``) under a steady stream.
* the Monitor sensor (:class:`streams.lean.LeanMonitor`) and the topics' schema
  (:class:`streams.lean.RawSchema`): no per-event statistics, no codec look-ups for raw bytes.
* the partition assignor (:mod:`streams.assignor`, ``dedicated_sequencer``): with two or more workers,
  the holder of material-events-verified verifies nothing, so the sequencer has a core to itself.
* web server off unless a port is given (then bound to 127.0.0.1): queries go through the HTTP API over
  the store, because Faust's views answer 500 before partitions are assigned.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping
from typing import Any

import faust
from faust.transport.drivers.aiokafka import Producer as AIOKafkaProducerDriver

from streams.assignor import dedicated_sequencer_assignor
from streams.lean import FastDrainConsumer, LeanMonitor
from streams.settings import Settings

__all__ = ["IdempotentProducer", "create_app"]


def faust_config(settings: Settings) -> dict[str, Any]:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    session_ms = settings.session_timeout_s
    config: dict[str, Any] = {
        "broker": settings.broker,
        "store": "memory://",
        "autodiscover": False,
        "datadir": str(settings.data_dir),
        "topic_disable_leader": True,
        "topic_allow_declare": False,
        "topic_partitions": 1,
        "topic_replication_factor": 1,
        "processing_guarantee": "at_least_once",
        "broker_session_timeout": session_ms,
        "broker_heartbeat_interval": max(session_ms / 3.0, 0.5),
        "broker_rebalance_timeout": max(session_ms * 2, 10.0),
        "broker_commit_interval": 1.0,
        "broker_max_poll_records": 2000,
        "stream_buffer_maxsize": 8192,
        "stream_recovery_delay": 0.0,
        "consumer_auto_offset_reset": "earliest",
        "producer_acks": -1,
        "producer_linger": 0.005,
        "producer_max_request_size": 2 * 1024 * 1024,
        "consumer_max_fetch_size": 4 * 1024 * 1024,
        "web_enabled": settings.web_port is not None,
        "web_host": "127.0.0.1",
        "web_bind": "127.0.0.1",
        "worker_redirect_stdouts": False,
        # The Kafka client id names host and pid: the consumer group's member list then says which
        # worker holds material-events-verified, i.e. the sequencer (`kafka-consumer-groups --describe`).
        "broker_client_id": f"batteryledger-{socket.gethostname()}-{os.getpid()}",
        # Faust's web statistics are not served: keep the sensor's totals, not its per-event records
        "Monitor": LeanMonitor,
    }
    if settings.web_port is not None:
        config["web_port"] = settings.web_port
    if settings.dedicated_sequencer:
        config["PartitionAssignor"] = dedicated_sequencer_assignor(settings.verified_topic)
    return config


class IdempotentProducer(AIOKafkaProducerDriver):
    """Faust's aiokafka producer with ``acks=all`` and ``enable_idempotence=True`` on every send.

    Faust turns idempotence on only inside its transactions (exactly-once mode, which we do not use), so
    without this a send retried after a leader change could be written twice to the verified topic.
    Idempotence makes the broker drop the retried copy. The sequencer is idempotent by event id anyway;
    this keeps the topic itself free of duplicates, as the Publisher's producer keeps material-events.
    """

    def _settings_extra(self) -> Mapping[str, Any]:
        return {**super()._settings_extra(), "acks": "all", "enable_idempotence": True}


def create_app(settings: Settings, *, install: bool = True) -> faust.App:
    """A Faust app for `settings`, with the ledger's agents installed (unless `install=False`)."""
    app = faust.App(settings.app_id, **faust_config(settings))
    app.transport.Producer = IdempotentProducer  # type: ignore[misc]  # this app only, not the class
    app.transport.Consumer = FastDrainConsumer.configured(  # type: ignore[misc]
        fetch_min_bytes=settings.fetch_min_bytes, fetch_max_wait_ms=round(settings.fetch_wait_s * 1000)
    )
    logging.getLogger("faust").setLevel(logging.WARNING)
    if install:
        from streams.agents import install_agents

        install_agents(app, settings)
    return app
