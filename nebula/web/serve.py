"""Running one application on listening sockets until SIGTERM or SIGINT, and binding them.

`serve_app` is what one Nebula process does (the only process with `--workers 1`, each worker
otherwise): start the app (its cleanup context connects to the database, migrates it if asked,
starts the background tasks), and only then accept connections and call `on_ready`, so that
"listening" is said once the server really serves and a failed start is an exception (a
NebulaError for an operator's mistake) instead of a traceback after "listening". The first
SIGTERM or SIGINT stops it gracefully: the listening sockets close, requests in flight get
`shutdown_timeout` seconds to finish, idle keep-alive connections close, and the app's cleanup
runs (it flushes the batched last-seen times). Further signals during the drain are ignored.

Imports nebula.config and nebula.errors only.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import Callable, Sequence

from aiohttp import web

from nebula.config import split_listen
from nebula.errors import ConfigError

log = logging.getLogger(__name__)

ACCESS_LOG_FORMAT = '%a "%r" %s %b %Tfs'
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def bind(listen: str, *, reuse_port: bool = False, backlog: int = 1024) -> socket.socket:
    """A listening, non-blocking TCP socket on HOST:PORT. With reuse_port several sockets share
    the port and the kernel spreads new connections over them (one per worker)."""
    host, port = split_listen(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host or "0.0.0.0", port))
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {listen}: {exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock


async def serve_app(
    app: web.Application,
    sockets: Sequence[socket.socket],
    *,
    shutdown_timeout: float,
    on_ready: Callable[[], None] = lambda: None,
    signals: Sequence[int] = STOP_SIGNALS,
) -> int:
    """Serve `app` on `sockets` until a stop signal; returns the signal's number. Startup
    errors propagate (after whatever had started is cleaned up)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    received: list[int] = []

    def on_signal(signum: int) -> None:
        if not received:
            log.info(
                "%s: stopping (in-flight requests get %.0f s)",
                signal.Signals(signum).name,
                shutdown_timeout,
            )
        received.append(signum)
        stop.set()

    for signum in signals:
        loop.add_signal_handler(signum, on_signal, signum)
    runner = web.AppRunner(
        app,
        handle_signals=False,
        shutdown_timeout=shutdown_timeout,
        access_log_format=ACCESS_LOG_FORMAT,
    )
    try:
        try:
            await runner.setup()
            for sock in sockets:
                await web.SockSite(runner, sock).start()
        except BaseException:
            try:
                await runner.cleanup()
            except Exception:
                log.exception("cleanup after a failed start failed too")
            raise
        on_ready()
        await stop.wait()
        await runner.cleanup()
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)
    return received[0]
