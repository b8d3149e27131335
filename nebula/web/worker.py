"""One worker of `nebula serve --workers N`: a fresh interpreter the parent (nebula.web.workers)
starts with the listening sockets it bound, the settings, and a pipe to say how its start went.

    python -c "from nebula.web.worker import main; main()" SPEC_JSON

SPEC_JSON holds the settings (migrations off: the parent ran them), the file descriptors of the
worker's sockets (one per listener), the descriptor of the pipe, the worker's number and the
metrics directory. The worker writes "ready" to the pipe once it serves, or "error MESSAGE"
when its start failed (and exits 1). SIGTERM drains it (nebula.web.serve); SIGINT is the
parent's to act on (a Ctrl-C in a terminal reaches the whole process group); a worker whose
parent is gone stops itself. Every response says which process answered it
(`X-Nebula-Worker: PID`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import threading
import time
from typing import Any

from aiohttp import web

from nebula.config import load_settings
from nebula.errors import NebulaError
from nebula.web.app import create_app
from nebula.web.edge import add_prepare_hook
from nebula.web.logs import configure_logging
from nebula.web.serve import serve_app

WORKER_HEADER = "X-Nebula-Worker"


def _watch_parent(parent: int) -> None:
    """SIGTERM to this process once its parent is gone (the parent was killed hard)."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGTERM)


def _report(fd: int, line: str) -> None:
    with contextlib.suppress(OSError):  # the parent is gone: nobody to tell
        os.write(fd, (line.replace("\n", " ") + "\n").encode())


def main(argv: list[str] | None = None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    spec: dict[str, Any] = json.loads((argv or sys.argv[1:])[0])
    ready_fd = int(spec["ready_fd"])
    index = int(spec["index"])
    settings = load_settings(spec["settings"], environ={})
    configure_logging(settings.log_level, settings.log_format, worker=index)
    threading.Thread(target=_watch_parent, args=(int(spec["parent"]),), daemon=True).start()
    sockets = [socket.socket(fileno=int(fd)) for fd in spec["fds"]]
    for sock in sockets:
        sock.setblocking(False)
    pid = str(os.getpid())

    def tag(_request: web.Request, response: web.StreamResponse) -> None:
        response.headers[WORKER_HEADER] = pid

    try:
        app = create_app(settings, multiprocess_dir=spec["metrics_dir"])
        add_prepare_hook(app, tag)
        asyncio.run(
            serve_app(
                app,
                sockets,
                settings=settings,
                on_ready=lambda: _report(ready_fd, "ready"),
                signals=(signal.SIGTERM,),
            )
        )
    except NebulaError as exc:
        _report(ready_fd, f"error {exc}")
        sys.exit(1)
    except BaseException as exc:
        _report(ready_fd, f"error {type(exc).__name__}: {exc}")
        raise
