"""Running one application on listening sockets until SIGTERM or SIGINT, and binding them.

`serve_app` is what one Nebula process does (the only process with `--workers 1`, each worker
otherwise): start the app (its cleanup context connects to the database, migrates it if asked,
starts the background tasks), and only then accept connections and call `on_ready`, so that
"listening" is said once the server really serves (over TLS on every socket when tls_cert and
tls_key are set) and a failed start is an exception (a
NebulaError for an operator's mistake) instead of a traceback after "listening". The first
SIGTERM or SIGINT stops it gracefully: the listening sockets close, requests in flight get
shutdown_timeout seconds to finish (one whose body is still arriving included: it completes,
or its body timeout, shorter, answers it 408), idle keep-alive connections close, and the app's
cleanup runs (it flushes the batched last-seen times). Further signals during the drain are
ignored. Once started, what the process holds for good is frozen out of the garbage
collector's walks (`freeze_startup_objects`).

Imports nebula.config, nebula.errors, nebula.web.access and nebula.web.logs only.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import socket
import ssl
from collections.abc import Callable, Sequence
from typing import Any

from aiohttp import web

from nebula.config import Settings, split_listen
from nebula.errors import ConfigError
from nebula.web.access import RequestLog
from nebula.web.logs import ProtocolLog

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
CUT_GRACE = 1.0  # seconds aiohttp's shutdown gives what the drain's timeout left still running


def runner_options(settings: Settings) -> dict[str, Any]:
    """The keyword arguments of aiohttp's AppRunner that make a connection's limits Nebula's.

    aiohttp's keep-alive timer runs from a connection's start (and from each answer) and closes
    a connection still waiting for a whole request head when it fires: it is the header
    timeout, and the idle timeout of keep-alive connections with it (aiohttp's default is an
    hour). The body timeout is the handlers' (nebula.web.limits), the header budget a
    middleware's.
    """
    return {
        "keepalive_timeout": settings.header_timeout,
        # One line per request, and the request-duration histogram (nebula.web.access).
        "access_log_class": RequestLog,
        "logger": ProtocolLog(),
    }


async def drain(runner: web.AppRunner, timeout: float, poll: float = 0.05) -> None:
    """Stop accepting, close idle connections, and wait up to `timeout` seconds for the
    requests in flight to finish, their bodies still arriving included.

    aiohttp's own shutdown (runner.cleanup) marks every connection closing first, and a closing
    connection drops whatever it receives: a request whose body was still arriving could then
    never finish. Here connections are closed one by one as they become idle, so that the busy
    ones keep reading. Whether a connection is busy is aiohttp's private `_request_in_progress`;
    were it gone, every connection would count as idle and the drain would be aiohttp's (such
    a request then gets its 408 from the body timeout).
    """
    for site in list(runner.sites):
        await site.stop()
    server = runner.server
    if server is None:
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        busy = 0
        for conn in server.connections:
            if getattr(conn, "_request_in_progress", False):
                busy += 1
            else:
                conn.close()  # idle, or between requests: no new request starts on it
        if not busy or loop.time() >= deadline:
            return
        await asyncio.sleep(poll)


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The server's TLS context from tls_cert and tls_key, or None without them. A file that
    cannot be read or a key that does not match is an operator's mistake: one line, at start."""
    if not settings.tls:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
    except FileNotFoundError as exc:
        raise ConfigError(f"tls: {exc.filename}: no such file") from None
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"tls: cannot use certificate {settings.tls_cert} with key {settings.tls_key}: {exc}"
        ) from None
    return context


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


def freeze_startup_objects() -> None:
    """Move what the process holds once started (modules, the app, its settings and catalog)
    out of the garbage collector's sight: it lives as long as the process, yet every full
    collection walked its hundred thousand objects with the event loop stopped (20 ms each).
    Collected first, so that no garbage is frozen with it."""
    gc.collect()
    gc.freeze()


async def serve_app(
    app: web.Application,
    sockets: Sequence[socket.socket],
    *,
    settings: Settings,
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
                settings.shutdown_timeout,
            )
        received.append(signum)
        stop.set()

    for signum in signals:
        loop.add_signal_handler(signum, on_signal, signum)
    context = tls_context(settings)  # before anything starts: a bad file is a clean error
    # The graceful part of a stop is `drain`; what aiohttp's own shutdown then finds still busy
    # has had its shutdown_timeout already and is cut after CUT_GRACE.
    runner = web.AppRunner(
        app, handle_signals=False, shutdown_timeout=CUT_GRACE, **runner_options(settings)
    )
    try:
        try:
            await runner.setup()
            for sock in sockets:
                await web.SockSite(runner, sock, ssl_context=context).start()
        except BaseException:
            try:
                await runner.cleanup()
            except Exception:
                log.exception("cleanup after a failed start failed too")
            raise
        freeze_startup_objects()
        on_ready()
        await stop.wait()
        await drain(runner, settings.shutdown_timeout)
        await runner.cleanup()
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)
    return received[0]
