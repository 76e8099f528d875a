"""A real Apache Kafka broker on this machine: fetched from Maven Central, run as a child JVM.

There is no Kafka package in Debian and no Docker engine here, so the broker's jars come from Maven
Central (``streams/broker/pom.xml``) and run as ``java -cp 'libs/*' kafka.Kafka server.properties``:
exactly what ``bin/kafka-server-start.sh`` does. One node in KRaft combined mode (broker + controller),
bound to 127.0.0.1 on free ports, so tests can run while a demo broker is up.

Entry points:

* :func:`fetch` - copy the broker's jars into the cache (once; Maven's ~/.m2 caches the downloads).
* :class:`LocalBroker` - start/stop a broker owned by this process (tests, context manager).
* :func:`start_background`, :func:`status`, :func:`stop_background` - a broker that outlives the
  command that started it (``batteryledger broker start|status|stop``), tracked by a state file.
* :func:`create_topics` - create topics idempotently with kafka-python's admin client.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from streams.topics import Replication, TopicSpec, replication_for

__all__ = [
    "BROKER_SETTINGS",
    "CACHE_ENV",
    "CLUSTER_SETTINGS",
    "KAFKA_VERSION",
    "LOG4J_CONFIG",
    "POM_PATH",
    "STATE_ENV",
    "BrokerError",
    "BrokerStatus",
    "LocalBroker",
    "LocalCluster",
    "broker_config",
    "cluster_size",
    "create_topics",
    "default_cache_dir",
    "default_state_dir",
    "fetch",
    "node_settings",
    "start_background",
    "status",
    "stop_background",
]

BROKER_FILES = Path(__file__).resolve().parent / "broker"
POM_PATH = BROKER_FILES / "pom.xml"
LOG4J_CONFIG = BROKER_FILES / "log4j2.properties"

#: Cache root (jars go to ``$BATTERYLEDGER_CACHE/kafka``); default ``<checkout>/.cache``.
CACHE_ENV = "BATTERYLEDGER_CACHE"
#: Where ``batteryledger broker start`` keeps its state file and data.
#: Default ``<checkout>/.cache/broker-run``.
STATE_ENV = "BATTERYLEDGER_STATE"

#: A cold fetch downloads about 45 MB of jars; allow for a slow mirror, but never hang forever.
MVN_TIMEOUT_S = 900.0
#: Broker message.max.bytes: Kafka's default (1 MiB + record batch overhead). Our topics set
#: max.message.bytes to 1 MiB (streams.topics.TOPIC_MAX_MESSAGE_BYTES), far above MAX_EVENT_BYTES, so
#: oversized events reach the verifier and are rejected with a reason instead of bouncing off the broker.
BROKER_MESSAGE_MAX_BYTES = 1048588

_MARKER = "fetched.ok"
_STATE_FILE = "broker.json"
_LOG_FILE = "broker.log"
_PROPERTIES_FILE = "server.properties"
_CLUSTER_ID = re.compile(r"^[A-Za-z0-9_-]{22}$")
_HEAP = re.compile(r"^[1-9][0-9]*[kKmMgG]?$")
_PORT_RETRIES = 3


def _pom_kafka_version() -> str:
    """The pom is the single source of the Kafka version (compose and tests read it from there too)."""
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    node = ET.parse(POM_PATH).getroot().find("m:properties/m:kafka.version", ns)
    if node is None or not (node.text or "").strip():
        raise RuntimeError(f"{POM_PATH} has no <kafka.version> property")
    return (node.text or "").strip()


KAFKA_VERSION = _pom_kafka_version()


class BrokerError(RuntimeError):
    """The local broker could not be fetched, started, reached or stopped.

    ``summary`` is one line naming what failed and the fix; ``log_path`` and ``log_tail`` carry the
    evidence (Maven's or the broker's output). ``str()`` is the full :meth:`diagnostics`.
    """

    def __init__(
        self, summary: str, *, log_path: Path | None = None, log_tail: str = "", first_errors: str = ""
    ) -> None:
        self.summary = summary
        self.log_path = log_path
        self.log_tail = log_tail
        self.first_errors = first_errors
        super().__init__(self.diagnostics())

    def one_line(self) -> str:
        """For a CLI: the summary plus where the full log is."""
        return f"{self.summary} (log: {self.log_path})" if self.log_path else self.summary

    def diagnostics(self) -> str:
        text = self.summary
        if self.log_path:
            text += f"\nlog: {self.log_path}"
        if self.first_errors.strip():
            text += f"\n--- first errors in the log ---\n{self.first_errors.rstrip()}"
        if self.log_tail.strip():
            text += f"\n--- last lines of the log ---\n{self.log_tail.rstrip()}"
        return text


# --------------------------------------------------------------------------------------------- paths


def _checkout_root() -> Path | None:
    """The repository root when running from a checkout (editable install), else None."""
    root = Path(__file__).resolve().parents[1]
    if (root / "pyproject.toml").is_file() and (root / "streams" / "broker" / "pom.xml").is_file():
        return root
    return None


def _cache_root() -> Path:
    env = os.environ.get(CACHE_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    root = _checkout_root()
    if root is not None:
        return root / ".cache"
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip() or "~/.cache"
    return Path(xdg).expanduser() / "batteryledger"


def default_cache_dir() -> Path:
    """Where fetched jars live: ``$BATTERYLEDGER_CACHE/kafka`` or ``<checkout>/.cache/kafka``."""
    return _cache_root() / "kafka"


def default_state_dir() -> Path:
    """State of the background broker: ``$BATTERYLEDGER_STATE`` or ``<checkout>/.cache/broker-run``."""
    env = os.environ.get(STATE_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    root = _checkout_root()
    base = root / ".cache" if root is not None else _cache_root()
    return base / "broker-run"


def _tail(path: Path, n: int) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 256 * 1024))
            data = fh.read()
    except OSError:
        return ""
    lines = data.decode("utf-8", errors="replace").splitlines()
    return "\n".join(lines[-n:])


# --------------------------------------------------------------------------------------------- fetch


def _pom_digest() -> str:
    return hashlib.sha256(POM_PATH.read_bytes()).hexdigest()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise fetches across processes (two test sessions may start cold at once)."""
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _is_fetched(home: Path, digest: str) -> bool:
    marker = home / _MARKER
    try:
        return marker.read_text().strip() == digest and any((home / "libs").glob("kafka_2.13-*.jar"))
    except OSError:
        return False


def fetch(cache_dir: Path | None = None, *, timeout: float = MVN_TIMEOUT_S) -> Path:
    """Make sure the broker's jars are in ``<cache_dir>/kafka-<version>/libs`` and return that folder.

    Runs Maven only when the jars are missing or the pom changed since they were fetched (a marker file
    holding the pom's SHA-256 is written after a complete copy; partial copies are never used).
    """
    cache_dir = default_cache_dir() if cache_dir is None else Path(cache_dir)
    home = cache_dir / f"kafka-{KAFKA_VERSION}"
    digest = _pom_digest()
    if _is_fetched(home, digest):
        return home / "libs"
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerError(
            f"Maven (mvn) is not on PATH, so Kafka {KAFKA_VERSION} cannot be fetched: install it "
            "(apt-get install maven, or run scripts/install-system-deps.sh)"
        )
    home.mkdir(parents=True, exist_ok=True)
    with _locked(home / ".lock"):
        if _is_fetched(home, digest):
            return home / "libs"
        staging = home / "libs.partial"
        shutil.rmtree(staging, ignore_errors=True)
        log_path = home / "mvn.log"
        cmd = [
            mvn,
            "-q",
            "-B",
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={staging}",
            "-f",
            str(POM_PATH),
        ]
        with log_path.open("w") as log:
            log.write("$ " + " ".join(cmd) + "\n")
            log.flush()
            try:
                proc = subprocess.run(
                    cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, timeout=timeout
                )
            except subprocess.TimeoutExpired:
                raise BrokerError(
                    f"Maven did not finish fetching Kafka {KAFKA_VERSION} within {timeout:.0f} s: "
                    "check access to Maven Central and run `batteryledger broker fetch` again",
                    log_path=log_path,
                    log_tail=_tail(log_path, 40),
                ) from None
        if proc.returncode != 0 or not any(staging.glob("kafka_2.13-*.jar")):
            raise BrokerError(
                f"Maven could not fetch Kafka {KAFKA_VERSION} (exit code {proc.returncode}): check access to "
                "Maven Central (proxy: ~/.m2/settings.xml) and run `batteryledger broker fetch` again",
                log_path=log_path,
                log_tail=_tail(log_path, 40),
            )
        libs = home / "libs"
        shutil.rmtree(libs, ignore_errors=True)
        staging.rename(libs)
        (home / _MARKER).write_text(digest + "\n")
    return libs


# -------------------------------------------------------------------------------------------- broker


def _free_port(avoid: Iterable[int] = ()) -> int:
    avoid = set(avoid)
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in avoid:
            return port


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _admin(bootstrap: str, timeout: float) -> Any:
    from kafka import KafkaAdminClient

    ms = max(1000, int(timeout * 1000))
    return KafkaAdminClient(
        bootstrap_servers=bootstrap,
        client_id="batteryledger-admin",
        bootstrap_timeout_ms=ms,
        request_timeout_ms=ms,
    )


def _cluster_ready(bootstrap: str, timeout: float, node_id: int | None = None) -> bool:
    """True once the broker answers metadata and lists itself (registered and unfenced)."""
    try:
        admin = _admin(bootstrap, timeout)
    except Exception:
        return False
    try:
        brokers = admin.describe_cluster().get("brokers") or []
        if node_id is None:
            return bool(brokers)
        return any(int(b.get("broker_id", -1)) == node_id and not b.get("is_fenced") for b in brokers)
    except Exception:
        return False
    finally:
        admin.close()


#: The broker settings that make a one-node cluster behave like the ledger expects, apart from
#: listeners and paths. docker-compose.yml sets the same values as KAFKA_* variables
#: (tests/unit/test_compose.py checks that they agree).
BROKER_SETTINGS: dict[str, str] = {
    "process.roles": "broker,controller",
    "node.id": "1",
    "controller.listener.names": "CONTROLLER",
    "inter.broker.listener.name": "PLAINTEXT",
    # One replica of everything: there is one node.
    "default.replication.factor": "1",
    "min.insync.replicas": "1",
    "offsets.topic.replication.factor": "1",
    "transaction.state.log.replication.factor": "1",
    "transaction.state.log.min.isr": "1",
    "share.coordinator.state.topic.replication.factor": "1",
    "share.coordinator.state.topic.min.isr": "1",
    # Fast start and fast group joins on a 2-core machine.
    "offsets.topic.num.partitions": "1",
    "transaction.state.log.num.partitions": "1",
    "group.initial.rebalance.delay.ms": "0",
    # Topics are created explicitly with the partition counts we mean (streams/topics.py).
    "auto.create.topics.enable": "false",
    "num.partitions": "1",
    # Kafka's default; topics cap records at 1 MiB and the verifier events at 64 KiB (streams/topics.py).
    "message.max.bytes": str(BROKER_MESSAGE_MAX_BYTES),
}


#: What a cluster of 3 or more nodes changes (docker-compose.yml's `cluster` profile sets the same):
#: three copies of every internal topic, a write acknowledged by acks=all only once 2 replicas have it,
#: and never an out-of-sync replica elected leader (it would silently drop acknowledged records).
CLUSTER_SETTINGS: dict[str, str] = {
    "default.replication.factor": "3",
    "min.insync.replicas": "2",
    "offsets.topic.replication.factor": "3",
    "transaction.state.log.replication.factor": "3",
    "transaction.state.log.min.isr": "2",
    "share.coordinator.state.topic.replication.factor": "3",
    "share.coordinator.state.topic.min.isr": "2",
    "unclean.leader.election.enable": "false",
    # A SIGKILLed node is fenced (and leaves every ISR, so leadership moves) after this long without a
    # heartbeat; Kafka's default is 9 s. 6 s keeps failover tests short without flapping on a loaded box.
    "broker.session.timeout.ms": "6000",
    "broker.heartbeat.interval.ms": "1000",
}


#: Cluster sizes `broker start --nodes` accepts. Two nodes are refused: a KRaft quorum of 2 stops when
#: either dies, and min.insync.replicas 2 of 2 blocks every write when one broker is away.
MIN_CLUSTER_NODES = 3
MAX_CLUSTER_NODES = 9


def node_settings(nodes: int) -> dict[str, str]:
    """BROKER_SETTINGS for a cluster of ``nodes`` (1: the demo's single node, unchanged)."""
    if nodes == 1:
        return dict(BROKER_SETTINGS)
    if not MIN_CLUSTER_NODES <= nodes <= MAX_CLUSTER_NODES:
        raise BrokerError(
            f"--nodes {nodes} is not a usable cluster size: use 1 (one node) or "
            f"{MIN_CLUSTER_NODES} to {MAX_CLUSTER_NODES} (a quorum survives one node lost)"
        )
    return {**BROKER_SETTINGS, **CLUSTER_SETTINGS}


def broker_config(
    *,
    port: int,
    controller_port: int,
    log_dir: Path,
    node_id: int = 1,
    voters: str | None = None,
    settings: dict[str, str] | None = None,
) -> dict[str, str]:
    """server.properties of a KRaft broker+controller bound to 127.0.0.1.

    One node by default; a cluster node passes its ``node_id``, the shared ``voters`` string
    (``1@127.0.0.1:P1,2@127.0.0.1:P2,...``) and :func:`node_settings`.
    """
    return {
        **(BROKER_SETTINGS if settings is None else settings),
        "node.id": str(node_id),
        "controller.quorum.voters": voters or f"{node_id}@127.0.0.1:{controller_port}",
        "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(log_dir),
    }


class _PortTaken(Exception):
    """The broker lost the race for a port we picked (another process bound it first)."""


class LocalBroker:
    """One Kafka broker (KRaft, broker+controller, single node) on 127.0.0.1, owned by this process.

    ``data_dir`` holds server.properties, broker.log and the Kafka log dirs; it is formatted on first
    start and reused afterwards (topics survive a restart). Ports are picked free at start unless given.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        cache_dir: Path | None = None,
        port: int | None = None,
        controller_port: int | None = None,
        heap: str = "1g",
        node_id: int = 1,
        voters: str | None = None,
        cluster_id: str | None = None,
        settings: dict[str, str] | None = None,
    ) -> None:
        if not _HEAP.match(heap):
            raise BrokerError(f"heap size {heap!r} is not a JVM size: use e.g. '1g' or '768m'")
        self.node_id = node_id
        self.voters = voters
        self.cluster_id = cluster_id
        self.settings = settings
        self.data_dir = Path(data_dir).resolve()
        self.cache_dir = default_cache_dir() if cache_dir is None else Path(cache_dir)
        self.heap = heap
        self._want_port = port
        self._want_controller_port = controller_port
        self._port: int | None = None
        self._controller_port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    def __repr__(self) -> str:
        where = self._bootstrap_or_none() or "not running"
        return f"LocalBroker({str(self.data_dir)!r}, {where})"

    # -- properties

    @property
    def log_path(self) -> Path:
        return self.data_dir / _LOG_FILE

    @property
    def properties_path(self) -> Path:
        return self.data_dir / _PROPERTIES_FILE

    @property
    def port(self) -> int | None:
        return self._port

    @property
    def controller_port(self) -> int | None:
        return self._controller_port

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def bootstrap(self) -> str:
        """``127.0.0.1:<port>`` of the running broker."""
        found = self._bootstrap_or_none()
        if found is None:
            raise BrokerError("the broker is not running: call start() first")
        return found

    def _bootstrap_or_none(self) -> str | None:
        if self._port is None or not self.is_running():
            return None
        return f"127.0.0.1:{self._port}"

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, n: int = 60) -> str:
        """The last ``n`` lines of the broker's log (stdout and stderr of the JVM)."""
        return _tail(self.log_path, n)

    # -- lifecycle

    def __enter__(self) -> LocalBroker:
        if not self.is_running():
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self, timeout: float = 60.0) -> str:
        """Start the broker and wait until it serves metadata; returns the bootstrap address.

        ``timeout`` bounds the wait after launch (fetching jars, done once, is not counted). Raises
        :class:`BrokerError` with the log tail if the JVM exits or the broker does not answer in time.
        """
        if self.is_running():
            return self.bootstrap
        java = shutil.which("java")
        if java is None:
            raise BrokerError(
                "java is not on PATH: install Java 17 or newer (apt-get install openjdk-17-jre-headless)"
            )
        libs = fetch(self.cache_dir)
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self.log_path.touch()
        except OSError as exc:
            raise BrokerError(
                f"cannot use {self.data_dir} as the broker's data dir ({exc.strerror}): "
                "pass another --data-dir"
            ) from None
        fixed_ports = self._want_port is not None or self._want_controller_port is not None
        attempts = 1 if fixed_ports else _PORT_RETRIES
        for attempt in range(1, attempts + 1):
            port = self._want_port or _free_port()
            cport = self._want_controller_port or _free_port(avoid={port})
            if port == cport:
                raise BrokerError(f"port and controller port are both {port}: give two different ports")
            self._write_properties(port, cport)
            self._format_storage(java, libs)
            self._launch(java, libs)
            self._port, self._controller_port = port, cport
            try:
                self._wait_ready(timeout)
            except _PortTaken:
                taken = self._taken_port()
                self._kill()
                if fixed_ports:
                    which = f"port {taken}" if taken and taken != "?" else f"port {port} or {cport}"
                    raise self._failure(
                        f"{which} is already in use: pick another --port, or give none to use a free one"
                    ) from None
                if attempt == attempts:
                    raise self._failure(
                        f"free ports were taken by another process {attempts} times in a row (last "
                        f"{port}/{cport}): try again"
                    ) from None
                continue
            except BaseException:
                self._kill()
                raise
            return self.bootstrap
        raise AssertionError("unreachable")  # pragma: no cover

    def _launch_fixed(self, java: str, libs: Path) -> None:
        """Write properties, format once and launch on the ports given (a cluster node); no wait."""
        assert self._want_port is not None and self._want_controller_port is not None
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self.log_path.touch()
        except OSError as exc:
            raise BrokerError(
                f"cannot use {self.data_dir} as a broker's data dir ({exc.strerror}): pass another --data-dir"
            ) from None
        self._write_properties(self._want_port, self._want_controller_port)
        self._format_storage(java, libs)
        self._launch(java, libs)
        self._port, self._controller_port = self._want_port, self._want_controller_port

    def kill(self) -> None:
        """SIGKILL the broker (a crash: no controlled shutdown, no flush). Safe to call twice."""
        self._kill()

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM (controlled shutdown), wait up to ``timeout`` s, then SIGKILL. Safe to call twice."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        self._proc = None

    def _kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            _signal_group(self._proc.pid, signal.SIGKILL)
            self._proc.wait(timeout=10)
        self._proc = None

    def _detach(self) -> None:
        """Forget the child without stopping it (background mode: the state file tracks it)."""
        self._proc = None

    # -- steps

    def _write_properties(self, port: int, cport: int) -> None:
        config = broker_config(
            port=port,
            controller_port=cport,
            log_dir=self.data_dir / "kraft-logs",
            node_id=self.node_id,
            voters=self.voters,
            settings=self.settings,
        )
        header = "# Written by batteryledger's LocalBroker at every start (streams/localbroker.py:broker_config).\n"
        self.properties_path.write_text(header + "".join(f"{k}={v}\n" for k, v in config.items()))

    def _format_storage(self, java: str, libs: Path) -> None:
        if (self.data_dir / "kraft-logs" / "meta.properties").is_file():
            return  # formatted before: keep the topics
        base = [java, "-Xmx256m", "-cp", f"{libs}/*", "kafka.tools.StorageTool"]
        if self.cluster_id is not None:  # a cluster node: every node is formatted with the same id
            self._run_tool([*base, "format", "-t", self.cluster_id, "-c", str(self.properties_path)])
            return
        uuid_run = self._run_tool([*base, "random-uuid"])
        ids = [ln.strip() for ln in uuid_run.splitlines() if _CLUSTER_ID.match(ln.strip())]
        if not ids:
            raise BrokerError(
                "kafka.tools.StorageTool random-uuid printed no cluster id",
                log_path=self.log_path,
                log_tail=self.log_tail(),
            )
        self._run_tool([*base, "format", "-t", ids[-1], "-c", str(self.properties_path)])

    def _run_tool(self, cmd: list[str]) -> str:
        try:
            proc = subprocess.run(
                cmd,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=120,
                cwd=self.data_dir,
            )
        except subprocess.TimeoutExpired:
            raise BrokerError(f"{' '.join(cmd[-4:])} did not finish within 120 s") from None
        with self.log_path.open("a") as log:
            log.write(f"$ {' '.join(cmd)}\n{proc.stdout}{proc.stderr}")
        if proc.returncode != 0:
            raise BrokerError(
                f"formatting Kafka storage in {self.data_dir} failed (exit code {proc.returncode}): "
                "remove the folder or use another --data-dir",
                log_path=self.log_path,
                log_tail=self.log_tail(),
            )
        return proc.stdout

    def _launch(self, java: str, libs: Path) -> None:
        cmd = [
            java,
            f"-Xmx{self.heap}",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
            "-cp",
            f"{libs}/*",
            "kafka.Kafka",
            str(self.properties_path),
        ]
        with self.log_path.open("ab") as log:
            self._log_offset = log.tell()
            log.write(f"$ {' '.join(cmd)}\n".encode())
            log.flush()
            # Own session = own process group: a Ctrl-C in the terminal does not hit the broker
            # mid-write, and stop() can signal the whole group.
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                start_new_session=True,
            )

    def _wait_ready(self, timeout: float) -> None:
        assert self._proc is not None and self._port is not None
        bootstrap = f"127.0.0.1:{self._port}"
        deadline = time.monotonic() + timeout
        while True:
            code = self._proc.poll()
            if code is not None:
                if self._bind_failed():
                    raise _PortTaken
                raise self._failure(
                    f"Kafka exited with code {code} while starting (data dir {self.data_dir})"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._failure(
                    f"Kafka did not answer on {bootstrap} within {timeout:.0f} s: see its log; on a slow machine "
                    "allow more time (--timeout)"
                )
            wait = min(2.0, max(1.0, remaining))
            if _port_open(self._port) and _cluster_ready(
                bootstrap, wait, self.node_id if self.voters else None
            ):
                if self._proc.poll() is None:
                    return
                continue
            time.sleep(0.2)

    def _log_since_launch(self) -> str:
        try:
            with self.log_path.open("rb") as fh:
                fh.seek(self._log_offset)
                return fh.read().decode("utf-8", errors="replace")
        except OSError:
            return ""

    def _first_errors(self, n: int = 5) -> str:
        """The first ERROR/FATAL lines since launch: the cause, before pages of shutdown noise."""
        lines = self._log_since_launch().splitlines()
        found: list[str] = []
        for i, line in enumerate(lines):
            if " ERROR " in line or " FATAL " in line:
                found.append(line)
                # The exception's message follows on the next line (its stack trace does not matter).
                after = lines[i + 1] if i + 1 < len(lines) else ""
                if after and not after.startswith(("[", "\t", " ")):
                    found.append("    " + after)
                if len(found) >= 2 * n:
                    break
        return "\n".join(found)

    def _failure(self, summary: str) -> BrokerError:
        return BrokerError(
            summary, log_path=self.log_path, log_tail=self.log_tail(), first_errors=self._first_errors()
        )

    def _bind_failed(self) -> bool:
        return self._taken_port() is not None

    def _taken_port(self) -> str | None:
        """The port named by a bind failure in the log since the last launch, if any."""
        text = self._log_since_launch()
        found = re.search(r"failed to bind to [^\s]*:(\d+): Address already in use", text)
        if found:
            return found.group(1)
        return "?" if "Address already in use" in text else None


def _signal_group(pid: int, sig: signal.Signals) -> None:
    """Signal the broker's process group (it leads its own session), or the process alone."""
    with contextlib.suppress(ProcessLookupError):
        try:
            if os.getpgid(pid) == pid:
                os.killpg(pid, sig)
                return
        except ProcessLookupError:
            return
        os.kill(pid, sig)


# --------------------------------------------------------------------------------------- cluster


def _new_cluster_id() -> str:
    """A Kafka Uuid (22 base64url characters of 16 random bytes), as ``StorageTool random-uuid``."""
    while True:
        text = base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")
        if not text.startswith("-"):  # Kafka avoids these too: they read as a command-line flag
            return text


class LocalCluster:
    """``nodes`` Kafka nodes on 127.0.0.1, each broker AND controller (KRaft combined mode).

    Combined mode, because on one machine separate controllers only add JVMs: three controllers form
    the metadata quorum either way, and a quorum of 3 survives one node lost, exactly as the brokers'
    replication factor 3 with ``min.insync.replicas`` 2 does. In production, run dedicated controllers
    (``process.roles=controller`` on 3 small nodes) so that a broker's load or a broker's crash never
    costs the quorum a voter; the broker settings (:data:`CLUSTER_SETTINGS`) stay the same.

    ``data_dir/node-<id>`` holds each node's properties, log and Kafka data; the cluster id is kept in
    ``data_dir/cluster.id`` so a restarted cluster reuses its formatted storage. Ports are free ones
    picked at each :meth:`start`; a node restarted alone (:meth:`restart`) keeps its ports.
    """

    def __init__(
        self, data_dir: Path, *, nodes: int = 3, cache_dir: Path | None = None, heap: str = "512m"
    ) -> None:
        self.settings = node_settings(nodes)
        if nodes < MIN_CLUSTER_NODES:
            raise BrokerError(f"a cluster has at least {MIN_CLUSTER_NODES} nodes; use LocalBroker for one")
        if not _HEAP.match(heap):
            raise BrokerError(f"heap size {heap!r} is not a JVM size: use e.g. '512m' or '1g'")
        self.data_dir = Path(data_dir).resolve()
        self.cache_dir = default_cache_dir() if cache_dir is None else Path(cache_dir)
        self.size = nodes
        self.heap = heap
        self.nodes: list[LocalBroker] = []

    def __enter__(self) -> LocalCluster:
        if not self.nodes:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def bootstrap(self) -> str:
        """``127.0.0.1:P1,127.0.0.1:P2,...``: every node, so a client starts from any live one."""
        if not self.nodes:
            raise BrokerError("the cluster is not running: call start() first")
        return ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def node(self, node_id: int) -> LocalBroker:
        for n in self.nodes:
            if n.node_id == node_id:
                return n
        raise BrokerError(f"no node {node_id} in this cluster (nodes 1 to {self.size})")

    def _cluster_id(self) -> str:
        path = self.data_dir / "cluster.id"
        if path.is_file():
            return path.read_text().strip()
        cid = _new_cluster_id()
        path.write_text(cid + "\n")
        return cid

    def start(self, timeout: float = 180.0) -> str:
        """Launch every node, then wait until each has joined (the quorum needs a majority up first)."""
        java = shutil.which("java")
        if java is None:
            raise BrokerError(
                "java is not on PATH: install Java 17 or newer (apt-get install openjdk-17-jre-headless)"
            )
        libs = fetch(self.cache_dir)
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BrokerError(
                f"cannot create {self.data_dir} ({exc.strerror}): pass another --data-dir"
            ) from None
        cluster_id = self._cluster_id()
        ports: list[int] = []
        for _ in range(2 * self.size):
            ports.append(_free_port(avoid=ports))
        voters = ",".join(f"{i + 1}@127.0.0.1:{ports[2 * i + 1]}" for i in range(self.size))
        self.nodes = [
            LocalBroker(
                self.data_dir / f"node-{i + 1}",
                cache_dir=self.cache_dir,
                port=ports[2 * i],
                controller_port=ports[2 * i + 1],
                heap=self.heap,
                node_id=i + 1,
                voters=voters,
                cluster_id=cluster_id,
                settings=self.settings,
            )
            for i in range(self.size)
        ]
        deadline = time.monotonic() + timeout
        try:
            # Formatting is one short JVM per node: run them side by side, then launch every node.
            with ThreadPoolExecutor(max_workers=self.size) as pool:
                list(pool.map(lambda n: n._launch_fixed(java, libs), self.nodes))
            for n in self.nodes:
                n._wait_ready(max(1.0, deadline - time.monotonic()))
        except _PortTaken:
            self.stop(timeout=5)
            raise BrokerError(
                "a free port was taken by another process while the cluster started: try again"
            ) from None
        except BaseException:
            self.stop(timeout=5)
            raise
        return self.bootstrap

    def kill(self, node_id: int) -> None:
        """SIGKILL one node (a crash)."""
        self.node(node_id).kill()

    def restart(self, node_id: int, timeout: float = 120.0) -> None:
        """Start one stopped or killed node again on its ports, and wait until it has rejoined."""
        n = self.node(node_id)
        if n.is_running():
            return
        java = shutil.which("java")
        assert java is not None
        n._launch_fixed(java, fetch(self.cache_dir))
        n._wait_ready(timeout)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM every node at once (one by one, the last would wait for a quorum), then SIGKILL."""
        for n in self.nodes:
            if n.is_running() and n.pid is not None:
                _signal_group(n.pid, signal.SIGTERM)
        for n in self.nodes:
            n.stop(timeout=timeout)

    def leader(self, topic: str, partition: int = 0, timeout: float = 10.0) -> int:
        """Node id leading ``topic``'s ``partition`` now (-1: none, the partition is offline)."""
        admin = _admin(self.bootstrap, timeout)
        try:
            for info in admin.describe_topics([topic]):
                for p in info.get("partitions") or []:
                    if p["partition_index"] == partition:
                        return int(p["leader_id"])
        finally:
            admin.close()
        raise BrokerError(f"topic {topic!r} has no partition {partition}")

    def nodes_status(self) -> list[dict[str, Any]]:
        return [
            {
                "node_id": n.node_id,
                "pid": n.pid,
                "port": n.port,
                "controller_port": n.controller_port,
                "data_dir": str(n.data_dir),
                "log_path": str(n.log_path),
                "properties_path": str(n.properties_path),
            }
            for n in self.nodes
        ]


# ------------------------------------------------------------------------------- background broker


@dataclass(frozen=True)
class BrokerStatus:
    """What ``batteryledger broker status`` reports."""

    running: bool
    bootstrap: str | None = None
    pid: int | None = None
    port: int | None = None
    controller_port: int | None = None
    data_dir: str | None = None
    log_path: str | None = None
    properties_path: str | None = None
    kafka_version: str | None = None
    detail: str = ""
    #: A cluster's nodes (``broker start --nodes 3``): node_id, pid, port, controller_port, data_dir,
    #: log_path, properties_path and, in a status, ``running``. Empty for the single-node broker.
    nodes: tuple[dict[str, Any], ...] = ()


def _alive(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)  # reap it if it was our child and has exited
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _is_our_broker(pid: int, properties_path: str) -> bool:
    """Guard against pid reuse: the process must be kafka.Kafka running our server.properties."""
    if not _alive(pid):
        return False
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True  # no /proc (macOS): trust the pid
    return b"kafka.Kafka" in args and properties_path.encode() in args


def _read_state(state_dir: Path) -> BrokerStatus | None:
    path = state_dir / _STATE_FILE
    try:
        raw = json.loads(path.read_text())
        raw["nodes"] = tuple(raw.get("nodes") or ())
        return BrokerStatus(**{**raw, "running": False, "detail": ""})
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, ValueError, TypeError) as exc:
        raise BrokerError(f"broker state file {path} is unreadable ({exc}): delete it") from None


def status(state_dir: Path | None = None) -> BrokerStatus:
    """Is the background broker (or cluster) of ``state_dir`` running, and where?"""
    state_dir = default_state_dir() if state_dir is None else Path(state_dir)
    state = _read_state(state_dir)
    if state is None:
        return BrokerStatus(running=False, detail=f"no broker was started with state dir {state_dir}")
    if state.nodes:
        nodes = tuple({**n, "running": _is_our_broker(n["pid"], n["properties_path"])} for n in state.nodes)
        up = sum(1 for n in nodes if n["running"])
        down = [str(n["node_id"]) for n in nodes if not n["running"]]
        detail = f"{up} of {len(nodes)} nodes running" + (f" (down: node {', '.join(down)})" if down else "")
        return BrokerStatus(**{**asdict(state), "nodes": nodes, "running": up > 0, "detail": detail})
    assert state.pid is not None and state.properties_path is not None
    if _is_our_broker(state.pid, state.properties_path):
        return BrokerStatus(**{**asdict(state), "running": True, "detail": "running"})
    return BrokerStatus(
        **{**asdict(state), "running": False, "detail": f"broker process {state.pid} has exited"}
    )


def _write_state(state_dir: Path, result: BrokerStatus) -> None:
    stored = {k: v for k, v in asdict(result).items() if k not in ("running", "detail")}
    stored["nodes"] = list(stored.get("nodes") or ())
    tmp = state_dir / f"{_STATE_FILE}.tmp"
    tmp.write_text(json.dumps(stored, indent=2) + "\n")
    tmp.replace(state_dir / _STATE_FILE)


def start_background(
    state_dir: Path | None = None,
    *,
    data_dir: Path | None = None,
    cache_dir: Path | None = None,
    port: int | None = None,
    controller_port: int | None = None,
    heap: str | None = None,
    timeout: float = 60.0,
    nodes: int = 1,
) -> BrokerStatus:
    """Start a broker (or a ``nodes``-node cluster) that outlives this process.

    Its pids and ports go to ``<state_dir>/broker.json``. Already running: returns its status
    (``detail='already running'``) unless another port or cluster size was asked for.
    """
    state_dir = default_state_dir() if state_dir is None else Path(state_dir)
    settings_check = node_settings(nodes)  # refuses a bad --nodes before anything starts
    del settings_check
    current = status(state_dir)
    if current.running:
        have = max(1, len(current.nodes))
        if (port is not None and port != current.port) or have != nodes:
            what = f"a {have}-node cluster" if have > 1 else "a broker"
            raise BrokerError(
                f"{what} is already running at {current.bootstrap}: stop it first with "
                "`batteryledger broker stop`"
            )
        return BrokerStatus(**{**asdict(current), "detail": "already running"})
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BrokerError(
            f"cannot create the broker state dir {state_dir} ({exc.strerror}): set {STATE_ENV} "
            "or pass --state-dir"
        ) from None
    if nodes > 1:
        if port is not None:
            raise BrokerError("--port applies to one node; a cluster picks free ports for every node")
        cluster_dir = state_dir / f"cluster-{nodes}" if data_dir is None else Path(data_dir)
        cluster = LocalCluster(cluster_dir, nodes=nodes, cache_dir=cache_dir, heap=heap or "512m")
        bootstrap = cluster.start(timeout=max(timeout, 180.0))
        result = BrokerStatus(
            running=True,
            bootstrap=bootstrap,
            pid=cluster.nodes[0].pid,
            port=cluster.nodes[0].port,
            controller_port=cluster.nodes[0].controller_port,
            data_dir=str(cluster.data_dir),
            log_path=str(cluster.nodes[0].log_path),
            properties_path=str(cluster.nodes[0].properties_path),
            kafka_version=KAFKA_VERSION,
            detail="started",
            nodes=tuple(cluster.nodes_status()),
        )
        try:
            _write_state(state_dir, result)
        except OSError:
            cluster.stop()
            raise
        for n in cluster.nodes:
            n._detach()
        return result
    data_dir = state_dir / "data" if data_dir is None else Path(data_dir)
    broker = LocalBroker(
        data_dir, cache_dir=cache_dir, port=port, controller_port=controller_port, heap=heap or "1g"
    )
    bootstrap = broker.start(timeout=timeout)
    result = BrokerStatus(
        running=True,
        bootstrap=bootstrap,
        pid=broker.pid,
        port=broker.port,
        controller_port=broker.controller_port,
        data_dir=str(broker.data_dir),
        log_path=str(broker.log_path),
        properties_path=str(broker.properties_path),
        kafka_version=KAFKA_VERSION,
        detail="started",
    )
    try:
        _write_state(state_dir, result)
    except OSError:
        broker.stop()
        raise
    broker._detach()
    return result


def stop_background(state_dir: Path | None = None, timeout: float = 20.0) -> BrokerStatus:
    """Stop the background broker or cluster of ``state_dir`` (SIGTERM, bounded wait, SIGKILL).

    Returns the status it had; ``running=False`` with a detail when nothing was running.
    """
    state_dir = default_state_dir() if state_dir is None else Path(state_dir)
    current = status(state_dir)
    state_file = state_dir / _STATE_FILE
    if not current.running:
        state_file.unlink(missing_ok=True)
        return current
    pids = (
        [int(n["pid"]) for n in current.nodes if n["running"]] if current.nodes else [int(current.pid or 0)]
    )
    for pid in pids:  # all at once: a cluster stopped node by node waits for a quorum at the end
        _signal_group(pid, signal.SIGTERM)
    for pid in pids:
        if not _wait_gone(pid, timeout):
            _signal_group(pid, signal.SIGKILL)
            if not _wait_gone(pid, 10.0):
                raise BrokerError(f"broker process {pid} survived SIGKILL: check it with `ps -p {pid}`")
    state_file.unlink(missing_ok=True)
    return BrokerStatus(**{**asdict(current), "detail": "stopped"})


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


# ------------------------------------------------------------------------------------------ topics


def cluster_size(bootstrap: str, timeout: float = 30.0) -> int:
    """How many live (registered, unfenced) brokers the cluster at ``bootstrap`` has."""
    try:
        admin = _admin(bootstrap, timeout)
    except Exception as exc:
        raise BrokerError(
            f"cannot reach Kafka at {bootstrap} ({type(exc).__name__}): start it with "
            "`batteryledger broker start` or pass the right --broker"
        ) from None
    try:
        return len(admin.describe_cluster().get("brokers") or [])
    except Exception as exc:
        raise BrokerError(
            f"cannot describe the cluster at {bootstrap}: {type(exc).__name__}: {exc}"
        ) from None
    finally:
        admin.close()


def create_topics(
    bootstrap: str,
    specs: Iterable[TopicSpec],
    *,
    replication: Replication | None = None,
    timeout: float = 30.0,
) -> list[str]:
    """Create ``specs`` on the cluster at ``bootstrap``; returns the names created now.

    Idempotent: a topic that already exists with the same partition count is left as it is. One that
    exists with another count is an error (partition counts decide key placement and Faust's changelog
    layout, so we never silently use it). ``replication`` None = picked from the cluster's size
    (:func:`streams.topics.replication_for`): RF 3 and min ISR 2 on 3 brokers or more.
    """
    from kafka.errors import TopicAlreadyExistsError, for_code

    specs = list(specs)
    if not specs:
        return []
    if replication is None:
        replication = replication_for(cluster_size(bootstrap, timeout))
    try:
        admin = _admin(bootstrap, timeout)
    except Exception as exc:
        raise BrokerError(
            f"cannot reach Kafka at {bootstrap} ({type(exc).__name__}): start it with "
            "`batteryledger broker start` or pass the right --broker"
        ) from None
    try:
        response = admin.create_topics(
            {
                spec.name: {
                    "num_partitions": spec.partitions,
                    "replication_factor": replication.replication_factor,
                    "configs": {**replication.config, **dict(spec.config)},
                }
                for spec in specs
            },
            timeout_ms=int(timeout * 1000),
            raise_errors=False,
        )
        created: list[str] = []
        existing: list[str] = []
        failures: list[str] = []
        for topic in response["topics"]:
            code = topic["error_code"]
            if code == 0:
                created.append(topic["name"])
            elif code == TopicAlreadyExistsError.errno:
                existing.append(topic["name"])
            else:
                reason = topic.get("error_message") or for_code(code).__name__
                failures.append(f"{topic['name']}: {reason}")
        if failures:
            raise BrokerError(f"Kafka at {bootstrap} refused to create topics: {'; '.join(failures)}")
        if existing:
            wanted = {spec.name: spec.partitions for spec in specs}
            for info in admin.describe_topics(existing):
                have = len(info.get("partitions") or [])
                if have != wanted[info["name"]]:
                    raise BrokerError(
                        f"topic {info['name']!r} already exists with {have} partitions, but "
                        f"{wanted[info['name']]} are configured: delete the topic (its records are lost) "
                        f"or configure {have} partitions"
                    )
        admin.wait_for_topics([spec.name for spec in specs], timeout_ms=int(timeout * 1000))
        return created
    except BrokerError:
        raise
    except Exception as exc:
        raise BrokerError(f"creating topics on {bootstrap} failed: {type(exc).__name__}: {exc}") from None
    finally:
        admin.close()
