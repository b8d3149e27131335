"""`nebula serve --workers N` with N > 1: a parent that binds, migrates and supervises N worker
processes (nebula.web.worker), each a full Nebula with its own pool and caches.

The parent
- checks the database and runs the migrations once, before any worker starts;
- binds every listener once per worker with SO_REUSEPORT (after making sure nobody else
  listens there), so the kernel spreads new connections evenly over the workers, and keeps
  its copies: a worker that is replaced gets the same sockets back, and the connections that
  arrived for it meanwhile wait in its queue instead of being refused;
- makes the metrics directory (prometheus_client's multiprocess mode, see nebula.metrics) and
  removes it at exit;
- starts the workers (fresh interpreters, so nothing of the parent's state is shared) and says
  "listening" once every one of them serves; if one fails to start, it stops the others and
  exits with that worker's error;
- replaces a worker that dies after it served (logged as an error with its exit status): one
  crashed or OOM-killed worker does not take the others' connections down. A replacement that
  fails to start stops the whole server (exit 1), so that a broken database or configuration
  is a crash the service manager sees, not a restart loop;
- on SIGTERM or SIGINT closes its copies of the sockets, sends SIGTERM to every worker, waits
  for them to drain and flush (shutdown_timeout plus a margin, then SIGKILL) and exits 0 if
  every worker exited cleanly, 1 otherwise.

The jobs that run once per deployment are not the parent's: the workers elect a leader among
themselves and with other replicas (nebula.jobs.leader). Imports nebula.config, nebula.errors,
nebula.store.db and nebula.web.serve.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from nebula.config import Settings, child_environ
from nebula.errors import ConfigError, NebulaError
from nebula.store import db
from nebula.web.serve import bind

log = logging.getLogger(__name__)

_LAUNCH = "from nebula.web.worker import main; main()"
START_TIMEOUT = 120.0  # seconds for a worker to serve (connect, catalog) before it is given up
DRAIN_MARGIN = 30.0  # seconds past shutdown_timeout for the app's cleanup (the last flush)


class WorkerStartError(NebulaError):
    """A worker could not start (its own one-line reason)."""


@dataclass
class Worker:
    index: int
    sockets: list[socket.socket]
    proc: subprocess.Popen[bytes] | None = None
    pipe: int = -1  # the read end of its ready pipe
    ready: bool = False
    buffer: bytes = b""
    error: str = ""
    exits: list[int] = field(default_factory=list)


def _probe_free(listen: str) -> None:
    """ConfigError if something listens on `listen` already. SO_REUSEPORT would otherwise let
    a second server (of the same user) silently share the port with the first."""
    bind(listen).close()


async def _prepare_database(settings: Settings) -> None:
    engine = db.create_engine(settings.db, pool_size=1)
    try:
        await db.check_connection(engine)
        if settings.migrate:
            await db.upgrade(engine)
    finally:
        await engine.dispose()


def _describe(status: int) -> str:
    if status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"exit status {status}"


class Supervisor:
    def __init__(self, settings: Settings, count: int) -> None:
        self.settings = settings
        self.count = count
        self.worker_settings = dataclasses.replace(settings, migrate=False, workers=1)
        self.workers: list[Worker] = []
        self.metrics_dir = ""
        self.selector = selectors.DefaultSelector()
        self.stop_signal = 0
        self.wake_r, self.wake_w = os.pipe()

    # -- starting ------------------------------------------------------------------------------

    def _spawn(self, worker: Worker) -> None:
        read, write = os.pipe()
        fds = [s.fileno() for s in worker.sockets]
        spec = {
            "settings": dataclasses.asdict(self.worker_settings),
            "fds": fds,
            "ready_fd": write,
            "index": worker.index,
            "metrics_dir": self.metrics_dir,
            "parent": os.getpid(),
        }
        try:
            worker.proc = subprocess.Popen(
                [sys.executable, "-c", _LAUNCH, json.dumps(spec)],
                stdin=subprocess.DEVNULL,
                pass_fds=[*fds, write],
                env=child_environ({"PROMETHEUS_MULTIPROC_DIR": self.metrics_dir}),
            )
        finally:
            os.close(write)
        os.set_blocking(read, False)
        worker.pipe = read
        worker.ready = False
        worker.buffer = b""
        worker.error = ""
        self.selector.register(read, selectors.EVENT_READ, worker)

    def _read_pipe(self, worker: Worker) -> None:
        try:
            chunk = os.read(worker.pipe, 4096)
        except BlockingIOError:
            return
        if not chunk:  # the worker exited (or closed it): its exit is handled by poll
            self.selector.unregister(worker.pipe)
            os.close(worker.pipe)
            worker.pipe = -1
            return
        worker.buffer += chunk
        while b"\n" in worker.buffer:
            line, _, worker.buffer = worker.buffer.partition(b"\n")
            text = line.decode(errors="replace")
            if text == "ready":
                worker.ready = True
            elif text.startswith("error "):
                worker.error = text[len("error ") :]

    def _pump(self, timeout: float) -> None:
        """Wait up to `timeout` for a worker's message, a signal or a child's exit."""
        for key, _ in self.selector.select(timeout):
            if key.data is None:
                with contextlib.suppress(BlockingIOError):
                    os.read(self.wake_r, 4096)
            else:
                self._read_pipe(key.data)

    def _exited(self, worker: Worker) -> int | None:
        if worker.proc is None:
            return None
        status = worker.proc.poll()
        if status is None:
            return None
        if worker.pipe >= 0:  # read what it said before it went
            with contextlib.suppress(OSError):
                self._read_pipe(worker)
            if worker.pipe >= 0:
                self.selector.unregister(worker.pipe)
                os.close(worker.pipe)
                worker.pipe = -1
        worker.exits.append(status)
        self._forget_metrics(worker.proc.pid)
        worker.proc = None
        return status

    def _forget_metrics(self, pid: int) -> None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, self.metrics_dir)  # type: ignore[no-untyped-call]

    def _wait_ready(self, workers: list[Worker]) -> None:
        """Until every one of `workers` serves; WorkerStartError when one fails first."""
        deadline = time.monotonic() + START_TIMEOUT
        while not all(w.ready for w in workers):
            if self.stop_signal:
                raise WorkerStartError("stopped while the workers were starting")
            for w in workers:
                if not w.ready:
                    status = self._exited(w)
                    if status is not None:
                        raise WorkerStartError(
                            w.error or f"worker {w.index} could not start ({_describe(status)})"
                        )
            if time.monotonic() > deadline:
                raise WorkerStartError(f"workers did not start within {START_TIMEOUT:.0f} s")
            self._pump(0.2)

    # -- running -------------------------------------------------------------------------------

    def _on_signal(self, signum: int, _frame: object) -> None:
        if signum != signal.SIGCHLD and not self.stop_signal:
            self.stop_signal = signum

    def run(self, on_ready: Callable[[int], None]) -> int:
        """Serve until SIGTERM/SIGINT; the exit status for the process."""
        asyncio.run(_prepare_database(self.settings))
        listeners = [self.settings.listen]
        if self.settings.admin_listen:
            listeners.append(self.settings.admin_listen)
        for listen in listeners:
            _probe_free(listen)
        self.metrics_dir = tempfile.mkdtemp(prefix="nebula-metrics-")
        old_handlers = {
            s: signal.signal(s, self._on_signal)
            for s in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD)
        }
        os.set_blocking(self.wake_w, False)
        old_wakeup = signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        self.selector.register(self.wake_r, selectors.EVENT_READ, None)
        try:
            for index in range(self.count):
                sockets = [bind(listen, reuse_port=True) for listen in listeners]
                self.workers.append(Worker(index, sockets))
            for worker in self.workers:
                self._spawn(worker)
            try:
                self._wait_ready(self.workers)
            except WorkerStartError:
                self._stop_all(signal.SIGTERM)
                raise
            on_ready(self.count)
            return self._supervise()
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for s, handler in old_handlers.items():
                signal.signal(s, handler)
            for worker in self.workers:
                for sock in worker.sockets:
                    sock.close()
            self.selector.close()
            os.close(self.wake_r)
            os.close(self.wake_w)
            shutil.rmtree(self.metrics_dir, ignore_errors=True)

    def _supervise(self) -> int:
        while not self.stop_signal:
            for worker in self.workers:
                was_ready = worker.ready
                status = self._exited(worker)
                if status is None:
                    continue
                if not was_ready:
                    log.error(
                        "worker %d could not start again (%s): stopping the server",
                        worker.index,
                        worker.error or _describe(status),
                    )
                    self._stop_all(signal.SIGTERM)
                    return 1
                log.error(
                    "worker %d died (%s): starting a new one", worker.index, _describe(status)
                )
                self._spawn(worker)
            self._pump(1.0)
        log.info(
            "%s: stopping %d workers (in-flight requests get %.0f s)",
            signal.Signals(self.stop_signal).name,
            self.count,
            self.settings.shutdown_timeout,
        )
        return 0 if self._stop_all(signal.SIGTERM) else 1

    def _stop_all(self, signum: int) -> bool:
        """Close our copies of the sockets, signal every worker, wait for them (SIGKILL past
        the drain time); True when every one of them exited 0."""
        for worker in self.workers:
            for sock in worker.sockets:
                sock.close()
        running = [w for w in self.workers if w.proc is not None]
        for worker in running:
            if worker.proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    worker.proc.send_signal(signum)
        clean = True
        deadline = time.monotonic() + self.settings.shutdown_timeout + DRAIN_MARGIN
        while running:
            for worker in list(running):
                status = self._exited(worker)
                if status is not None:
                    running.remove(worker)
                    if status != 0:
                        log.error("worker %d ended with %s", worker.index, _describe(status))
                        clean = False
            if running and time.monotonic() > deadline:
                for worker in running:
                    log.error("worker %d did not stop in time: killing it", worker.index)
                    if worker.proc is not None:
                        worker.proc.kill()
                        worker.proc.wait()
                return False
            if running:
                self._pump(0.2)
        return clean


def cpu_count() -> int:
    """CPUs this process may run on (its affinity mask, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def worker_count(settings: Settings) -> int:
    """settings.workers, or when 0: the CPUs on PostgreSQL, 1 on SQLite."""
    if settings.workers:
        return settings.workers
    return 1 if settings.is_sqlite else cpu_count()


def run_workers(settings: Settings, count: int, on_ready: Callable[[int], None]) -> int:
    if count < 2:
        raise ConfigError("run_workers is for 2 workers or more")
    return Supervisor(settings, count).run(on_ready)
