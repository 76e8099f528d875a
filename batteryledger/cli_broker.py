"""``batteryledger broker ...``: fetch, start, stop and inspect the local Apache Kafka broker.

The broker started here runs in the background (it outlives the command); its pid, ports and data dir
are kept in ``<state dir>/broker.json`` so ``status`` and ``stop`` work from any later shell. The state
dir is ``$BATTERYLEDGER_STATE`` or ``<checkout>/.cache/broker-run``. Errors print one line and exit 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer

from streams import localbroker
from streams.localbroker import BrokerError

broker_app = typer.Typer(
    help="Run a local Apache Kafka broker (fetched from Maven Central) for the demo and development.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

StateDir = Annotated[
    Path | None,
    typer.Option(
        "--state-dir",
        help="Where the background broker's state file lives [default: $BATTERYLEDGER_STATE or "
        "<checkout>/.cache/broker-run].",
        show_default=False,
    ),
]


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    # SystemExit, not typer.Exit: with standalone_mode=False click turns typer.Exit into a return value,
    # which a caller may drop (the exit status would then be 0).
    raise SystemExit(1)


@broker_app.command()
def fetch(
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            "--cache-dir",
            help="Jar cache [default: $BATTERYLEDGER_CACHE/kafka or <checkout>/.cache/kafka].",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Download the Kafka broker's jars with Maven (once; later calls return at once)."""
    try:
        libs = localbroker.fetch(cache_dir)
    except BrokerError as exc:
        _fail(exc.one_line())
    typer.echo(f"Kafka {localbroker.KAFKA_VERSION} jars in {libs}")


@broker_app.command()
def start(
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", help="Broker data [default: <state dir>/data].", show_default=False),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(
            "--port", min=1, max=65535, help="Client port [default: a free one].", show_default=False
        ),
    ] = None,
    state_dir: StateDir = None,
    timeout: Annotated[
        float, typer.Option("--timeout", min=1, help="Seconds to wait for the broker.")
    ] = 60.0,
    nodes: Annotated[
        int,
        typer.Option(
            "--nodes",
            min=1,
            help="1: one node (the demo). 3 or more: a replicated KRaft cluster on loopback, every node "
            "broker and controller, 512 MB heap each; topics get replication factor 3, min ISR 2.",
        ),
    ] = 1,
    heap: Annotated[
        str | None,
        typer.Option(
            "--heap",
            help="JVM heap per node [default: 1g for one node, 512m per cluster node].",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Start the broker (or a cluster) in the background on 127.0.0.1 and print its bootstrap address."""
    try:
        result = localbroker.start_background(
            state_dir, data_dir=data_dir, port=port, timeout=timeout, nodes=nodes, heap=heap
        )
    except BrokerError as exc:
        _fail(exc.one_line())
    if result.detail == "already running":
        typer.echo(f"already running (pid {result.pid}); bootstrap:", err=True)
    elif result.nodes:
        typer.echo(
            f"started {len(result.nodes)} nodes (KRaft combined: each is broker and controller); bootstrap:",
            err=True,
        )
    typer.echo(result.bootstrap)


@broker_app.command()
def stop(
    state_dir: StateDir = None,
    timeout: Annotated[
        float, typer.Option("--timeout", min=1, help="Seconds to wait before SIGKILL.")
    ] = 20.0,
) -> None:
    """Stop the background broker (controlled shutdown, then SIGKILL after --timeout)."""
    try:
        result = localbroker.stop_background(state_dir, timeout=timeout)
    except BrokerError as exc:
        _fail(exc.one_line())
    if result.running and result.nodes:
        pids = ", ".join(str(n["pid"]) for n in result.nodes if n["running"])
        typer.echo(f"stopped cluster at {result.bootstrap} (pids {pids})")
    elif result.running:
        typer.echo(f"stopped broker at {result.bootstrap} (pid {result.pid})")
    else:
        typer.echo(f"not running: {result.detail}")


@broker_app.command()
def status(state_dir: StateDir = None) -> None:
    """Print whether the background broker runs and its bootstrap address; exit 1 when it does not.

    For a cluster: one line per node; exit 0 when every node runs, 1 when none does, 3 when some do.
    """
    try:
        result = localbroker.status(state_dir)
    except BrokerError as exc:
        _fail(exc.one_line())
    if result.nodes:
        typer.echo(f"cluster: {result.detail}; bootstrap {result.bootstrap} (Kafka {result.kafka_version})")
        for n in result.nodes:
            state = "running" if n["running"] else "down   "
            typer.echo(
                f"  node {n['node_id']}: {state} 127.0.0.1:{n['port']} (controller {n['controller_port']}, "
                f"pid {n['pid']}, data {n['data_dir']})"
            )
        up = sum(1 for n in result.nodes if n["running"])
        if up == len(result.nodes):
            return
        raise SystemExit(1 if up == 0 else 3)
    if result.running:
        typer.echo(
            f"running: {result.bootstrap} (Kafka {result.kafka_version}, pid {result.pid}, "
            f"data {result.data_dir})"
        )
        return
    typer.echo(f"not running: {result.detail}")
    raise SystemExit(1)
