"""Worker settings: one frozen dataclass, each field read from one environment variable.

| field | environment variable | default | meaning |
|---|---|---|---|
| broker | BATTERYLEDGER_BROKER | kafka://127.0.0.1:9092 | Kafka bootstrap (``host:port`` or ``kafka://host:port``) |
| store | BATTERYLEDGER_STORE | sqlite:///ledger.db | ledger store URL (SQLite path/URL or PostgreSQL URL) |
| app_id | BATTERYLEDGER_APP_ID | batteryledger | Faust app id = Kafka consumer group; one per ledger |
| partitions | BATTERYLEDGER_PARTITIONS | 2 | partitions of material-events (verify parallelism) |
| topic_suffix | BATTERYLEDGER_TOPIC_SUFFIX | "" | appended as ``-<suffix>`` to every topic name (tests, many ledgers on one cluster) |
| operator_key | BATTERYLEDGER_OPERATOR_KEY | none | operator's Ed25519 key file; without it no checkpoints are signed |
| worker_key | BATTERYLEDGER_WORKER_KEY | none | worker key file (HMAC secret of the verified hop, `batteryledger keys worker FILE`); without it the key is derived from operator_key, and a worker with neither refuses to start |
| max_batch | BATTERYLEDGER_MAX_BATCH | 2000 | most events the sequencer appends in one store transaction |
| batch_within_s | BATTERYLEDGER_BATCH_WITHIN | 0.01 | longest the sequencer waits for more verified records before appending what it has |
| verify_batch | BATTERYLEDGER_VERIFY_BATCH | 500 | events the verify agent takes at a time |
| verify_within_s | BATTERYLEDGER_VERIFY_WITHIN | 0.02 | longest the verify agent waits to fill a batch |
| verify_processes | BATTERYLEDGER_VERIFY_PROCESSES | 1 | helper processes that check the verify agent's batches, so one worker uses a second core (streams/verifypool.py); 0 = in the worker's own process |
| store_process | BATTERYLEDGER_STORE_PROCESS | 1 | the sequencer's appends, parked-event expiry and checkpoints run in one helper process of the worker holding material-events-verified, so its event loop and the store use different cores (streams/storeproc.py); 0 = in the worker's own process |
| fetch_min_bytes | BATTERYLEDGER_FETCH_MIN_BYTES | 32768 | a fetch waits for this much data ... |
| fetch_wait_s | BATTERYLEDGER_FETCH_WAIT | 0.02 | ... or this long (a backlog is served at once); fewer, fuller fetches under a steady stream |
| park_max_age_s | BATTERYLEDGER_PARK_MAX_AGE | 30 | how long an event waits for its parents (children before parents) |
| expire_interval_s | BATTERYLEDGER_EXPIRE_INTERVAL | 2 | how often waiting events are checked against park_max_age_s |
| checkpoint_every | BATTERYLEDGER_CHECKPOINT_EVERY | 10000 | sign a checkpoint after this many new entries ... |
| checkpoint_interval_s | BATTERYLEDGER_CHECKPOINT_INTERVAL | 30 | ... or after this many seconds with new entries |
| registry_refresh_s | BATTERYLEDGER_REGISTRY_REFRESH | 5 | how often a verify agent re-reads the registry (also, at most this often, on an unknown key) |
| session_timeout_s | BATTERYLEDGER_SESSION_TIMEOUT | 6 | Kafka consumer session timeout (a dead worker's partitions move after it) |
| web_port | BATTERYLEDGER_WEB_PORT | none | Faust's web server port on 127.0.0.1; none = disabled (queries go through the HTTP API) |
| data_dir | BATTERYLEDGER_WORKER_DIR | a temp dir | Faust's data directory (no tables are kept; it only needs to exist) |
| log_level | BATTERYLEDGER_LOG_LEVEL | info | worker log level |
| dedicated_sequencer | BATTERYLEDGER_DEDICATED_SEQUENCER | 1 | with two or more workers, the one holding material-events-verified verifies nothing (streams/assignor.py); 0 = Faust's even spread |

Why these defaults: a batch of 2000 keeps one SQLite transaction at tens of milliseconds; each verified
record already carries a whole verify batch, so the sequencer waits only 10 ms for more (at 1,000 events/s
that cut its share of publish -> appended from a median of 46-100 ms to 15-26 ms, issue 11), and the verify
agent 20 ms to fill a batch; fetches wait for 32 KiB or 20 ms, so a steady stream is fetched in tens of
events rather than one or two, while a backlog is served at once; 30 s of parking is the ledger's own bound (ledger.core.PARK_MAX_AGE); a 6 s
session timeout makes a SIGKILLed worker's partitions move within seconds (the Kafka default is 45 s).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from ledger.core import PARK_MAX_AGE
from ledger.intake import HopKey, HopKeyError
from streams.topics import (
    LEDGER_CHECKPOINTS,
    MATERIAL_EVENTS,
    MATERIAL_EVENTS_REJECTED,
    MATERIAL_EVENTS_VERIFIED,
    partitions_from_env,
)

__all__ = ["ENV", "Settings", "SettingsError", "normalise_broker", "resolve_hop_key"]

ENV = {
    "broker": "BATTERYLEDGER_BROKER",
    "store": "BATTERYLEDGER_STORE",
    "app_id": "BATTERYLEDGER_APP_ID",
    "topic_suffix": "BATTERYLEDGER_TOPIC_SUFFIX",
    "operator_key": "BATTERYLEDGER_OPERATOR_KEY",
    "worker_key": "BATTERYLEDGER_WORKER_KEY",
    "max_batch": "BATTERYLEDGER_MAX_BATCH",
    "batch_within_s": "BATTERYLEDGER_BATCH_WITHIN",
    "verify_batch": "BATTERYLEDGER_VERIFY_BATCH",
    "verify_within_s": "BATTERYLEDGER_VERIFY_WITHIN",
    "verify_processes": "BATTERYLEDGER_VERIFY_PROCESSES",
    "store_process": "BATTERYLEDGER_STORE_PROCESS",
    "fetch_min_bytes": "BATTERYLEDGER_FETCH_MIN_BYTES",
    "fetch_wait_s": "BATTERYLEDGER_FETCH_WAIT",
    "park_max_age_s": "BATTERYLEDGER_PARK_MAX_AGE",
    "expire_interval_s": "BATTERYLEDGER_EXPIRE_INTERVAL",
    "checkpoint_every": "BATTERYLEDGER_CHECKPOINT_EVERY",
    "checkpoint_interval_s": "BATTERYLEDGER_CHECKPOINT_INTERVAL",
    "registry_refresh_s": "BATTERYLEDGER_REGISTRY_REFRESH",
    "session_timeout_s": "BATTERYLEDGER_SESSION_TIMEOUT",
    "web_port": "BATTERYLEDGER_WEB_PORT",
    "data_dir": "BATTERYLEDGER_WORKER_DIR",
    "log_level": "BATTERYLEDGER_LOG_LEVEL",
    "dedicated_sequencer": "BATTERYLEDGER_DEDICATED_SEQUENCER",
}

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class SettingsError(ValueError):
    def diagnostics(self) -> str:
        return str(self)


def normalise_broker(broker: str) -> str:
    """``host:port[,host:port]`` or ``kafka://host:port`` -> Faust's ``kafka://host:port[;...]``."""
    text = broker.strip()
    if not text:
        raise SettingsError("the broker address is empty: give --broker HOST:PORT")
    if "://" in text:
        return text
    return ";".join("kafka://" + part.strip() for part in text.split(",") if part.strip())


def bootstrap_of(broker: str) -> str:
    """Faust broker URL(s) -> kafka-python's ``host:port,host:port``."""
    parts = [p.strip() for p in broker.replace(",", ";").split(";") if p.strip()]
    return ",".join(p.split("://", 1)[-1] for p in parts)


@dataclass(frozen=True)
class Settings:
    broker: str = "kafka://127.0.0.1:9092"
    store: str = "sqlite:///ledger.db"
    app_id: str = "batteryledger"
    partitions: int = 2
    topic_suffix: str = ""
    operator_key: Path | None = None
    worker_key: Path | None = None
    max_batch: int = 2000
    batch_within_s: float = 0.01
    verify_batch: int = 500
    verify_within_s: float = 0.02
    verify_processes: int = 1
    store_process: bool = True
    fetch_min_bytes: int = 32 * 1024
    fetch_wait_s: float = 0.02
    park_max_age_s: float = PARK_MAX_AGE.total_seconds()
    expire_interval_s: float = 2.0
    checkpoint_every: int = 10_000
    checkpoint_interval_s: float = 30.0
    registry_refresh_s: float = 5.0
    session_timeout_s: float = 6.0
    web_port: int | None = None
    data_dir: Path = field(default_factory=lambda: Path(tempfile.gettempdir()) / "batteryledger-worker")
    log_level: str = "info"
    dedicated_sequencer: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "broker", normalise_broker(self.broker))
        for name in ("max_batch", "verify_batch", "partitions", "checkpoint_every", "fetch_min_bytes"):
            if getattr(self, name) < 1:
                raise SettingsError(f"{name} must be at least 1 (set {ENV.get(name, name)})")
        if self.verify_processes < 0:
            raise SettingsError(f"verify_processes must be 0 or more (set {ENV['verify_processes']})")
        for name in (
            "batch_within_s",
            "verify_within_s",
            "fetch_wait_s",
            "expire_interval_s",
            "checkpoint_interval_s",
            "session_timeout_s",
        ):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{name} must be positive (set {ENV[name]})")

    # -- derived --------------------------------------------------------------------------------
    @property
    def bootstrap(self) -> str:
        return bootstrap_of(self.broker)

    def topic(self, logical: str) -> str:
        return f"{logical}-{self.topic_suffix}" if self.topic_suffix else logical

    @property
    def events_topic(self) -> str:
        return self.topic(MATERIAL_EVENTS)

    @property
    def verified_topic(self) -> str:
        return self.topic(MATERIAL_EVENTS_VERIFIED)

    @property
    def rejected_topic(self) -> str:
        return self.topic(MATERIAL_EVENTS_REJECTED)

    @property
    def checkpoints_topic(self) -> str:
        return self.topic(LEDGER_CHECKPOINTS)

    def with_(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]

    # -- environment ----------------------------------------------------------------------------
    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Settings from the environment; keyword overrides (e.g. CLI flags that were given) win."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        defaults = cls.__dataclass_fields__
        for name, var in ENV.items():
            raw = env.get(var, "").strip()
            if not raw:
                continue
            kind = str(defaults[name].type)
            try:
                if kind == "bool":
                    if raw.lower() not in _TRUE | _FALSE:
                        raise ValueError(raw)
                    values[name] = raw.lower() in _TRUE
                elif "int" in kind:
                    values[name] = int(raw)
                elif "float" in kind:
                    values[name] = float(raw)
                elif "Path" in kind:
                    values[name] = Path(raw)
                else:
                    values[name] = raw
            except ValueError:
                raise SettingsError(f"{var}={raw!r} is not a valid {kind}") from None
        try:
            values["partitions"] = partitions_from_env(env)
        except ValueError as exc:
            raise SettingsError(str(exc)) from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]

    def to_env(self) -> dict[str, str]:
        """The environment that reproduces these settings in a child process (`batteryledger worker`)."""
        out: dict[str, str] = {}
        for name, var in ENV.items():
            value = getattr(self, name)
            if isinstance(value, bool):
                out[var] = "1" if value else "0"
            elif value is not None:
                out[var] = str(value)
        out["BATTERYLEDGER_PARTITIONS"] = str(self.partitions)
        return out


def resolve_hop_key(settings: Settings) -> HopKey:
    """The worker key of the verified hop: the key file, else derived from the operator key. One-line errors."""
    if settings.worker_key is not None:
        return HopKey.load(settings.worker_key)
    if settings.operator_key is not None:
        from schemas.signing import KeyFileError, load_private_key

        try:
            return HopKey.derived(load_private_key(settings.operator_key))
        except KeyFileError as exc:
            raise HopKeyError(f"cannot derive the worker key from the operator key: {exc}") from None
    raise HopKeyError(
        "no worker key: the verified hop is authenticated; make one with `batteryledger keys worker FILE` "
        f"and set {ENV['worker_key']}=FILE on every worker (or give {ENV['operator_key']})"
    )
