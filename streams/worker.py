"""Run a ledger worker: in this process (``batteryledger worker``) or as a child process (tests, demo).

    $ BATTERYLEDGER_BROKER=127.0.0.1:9092 BATTERYLEDGER_STORE=sqlite:///ledger.db python -m streams.worker

A worker is one Faust worker with both agents: every worker verifies the raw-topic partitions it is
given, and whichever worker holds the single verified partition is the sequencer (while another worker
is in the group, the sequencer is given no raw partitions: streams/assignor.py). Start more workers
with the same app id (and store) to verify on more cores; SIGTERM stops one cleanly, and after a SIGKILL
a restarted worker resumes from the offset stored in the ledger, appending every event exactly once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from ledger.core import Ledger
from ledger.intake import HopKeyError
from ledger.store import StoreError
from streams.memory import freeze_heap, tune_malloc
from streams.settings import Settings, SettingsError, resolve_hop_key

__all__ = ["WorkerError", "WorkerProcess", "check_store", "main", "run_worker"]

READY_MARK = "batteryledger worker ready"


class WorkerError(RuntimeError):
    def diagnostics(self) -> str:
        return str(self)


def check_store(settings: Settings) -> None:
    """Fail early, in one line, when the store holds no ledger or no worker key is provisioned."""
    try:
        resolve_hop_key(settings)
    except HopKeyError as exc:
        raise WorkerError(str(exc)) from None
    try:
        Ledger(settings.store).close()
    except StoreError as exc:
        raise WorkerError(str(exc)) from None
    except Exception as exc:
        raise WorkerError(
            f"cannot open the ledger store {settings.store}: {type(exc).__name__}: {exc}"
        ) from None


def run_worker(settings: Settings) -> None:
    """Run a Faust worker for `settings` until SIGTERM/SIGINT (blocks; exits the process)."""
    import faust

    tune_malloc()  # before Faust's threads start (streams/memory.py)

    from streams.app import create_app

    check_store(settings)
    app = create_app(settings)
    freeze_heap()  # Faust, the Kafka clients, pydantic, SQLAlchemy: loaded for good (streams/memory.py)
    worker = faust.Worker(app, loglevel=settings.log_level, quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()


class WorkerProcess:
    """A worker in a child process, with its log in a file. Stop it with stop() (SIGTERM) or kill()."""

    def __init__(self, settings: Settings, log_path: Path, *, env: Mapping[str, str] | None = None) -> None:
        self.settings = settings
        self.log_path = Path(log_path)
        self.extra_env = dict(env or {})
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        env = dict(os.environ)
        env.update(self.settings.to_env())
        env.update(self.extra_env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "streams.worker"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=str(Path(__file__).resolve().parent.parent),
            )
        return self

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 40) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no worker log)"
        return "\n".join(lines[-n:])

    def kill(self) -> None:
        """SIGKILL: the crash the tests inflict."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM (Faust shuts down cleanly, committing offsets), SIGKILL after `timeout` seconds."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def main() -> None:
    try:
        settings = Settings.from_env()
        check_store(settings)
    except (SettingsError, WorkerError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    run_worker(settings)


if __name__ == "__main__":
    main()
