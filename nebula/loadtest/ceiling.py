"""The ceiling of `nebula bench`: a bare aiohttp server answering every POST with a constant.

    python -m nebula.loadtest.ceiling --port PORT [--workers N]

It reads each request's body (as Nebula does) and answers with the very bytes Nebula sends a
current host that checked in (`noupdate`, its ping and its event acknowledged; built once with
nebula.omaha.build), so that the bench can load it exactly as it loads Nebula and print how
close Nebula comes to what aiohttp itself can do on this machine, in the same run. With
`--workers N` it runs N processes on one port (SO_REUSEPORT), like `nebula serve --workers N`:
the sockets are all bound before any worker starts, so the first connection finds them all.

Imports nebula.omaha only; never the application, the database or the configuration.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import socket
import sys
from types import FrameType

from aiohttp import web

from nebula.omaha.build import build_response
from nebula.omaha.model import AppResponse, AppStatus, Response, UpdateCheckResult, UpdateStatus

APP_ID = "{e96281a6-d1af-4bde-9a0a-97b76e56dc57}"


def noupdate_document() -> bytes:
    """What Nebula answers a current host's update check (ping, check, one event)."""
    app = AppResponse(APP_ID, AppStatus.OK, True, 1, UpdateCheckResult(UpdateStatus.NO_UPDATE))
    return build_response(Response(apps=(app,)))


def make_app() -> web.Application:
    document = noupdate_document()

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=document, content_type="text/xml", charset="utf-8")

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application(client_max_size=1 << 20)
    app.router.add_post("/{tail:.*}", answer)
    app.router.add_get("/healthz", healthz)
    return app


def bind(host: str, port: int, reuse_port: bool) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(1024)  # as nebula serve does
    sock.setblocking(False)
    return sock


def _serve(sock: socket.socket) -> None:
    web.run_app(make_app(), sock=sock, print=None, access_log=None, handle_signals=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nebula.loadtest.ceiling")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if args.workers == 1:
        _serve(bind(args.host, args.port, reuse_port=False))
        return 0
    sockets = [bind(args.host, args.port, reuse_port=True) for _ in range(args.workers)]
    # fork: nothing runs yet in this process (no event loop, no threads), and each child
    # inherits the socket it is handed.
    ctx = multiprocessing.get_context("fork")
    children = [ctx.Process(target=_serve, args=(sock,), daemon=True) for sock in sockets]
    for child in children:
        child.start()
    for sock in sockets:
        sock.close()

    def stop(signum: int, frame: FrameType | None) -> None:
        for child in children:
            if child.pid is not None:
                os.kill(child.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for child in children:
        child.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
