"""nebula.web.serve: once a process serves, what it loaded at start is out of the garbage
collector's walks (gc.freeze), so that a full collection does not stop the event loop for
the hundred thousand objects of its modules and app."""

from __future__ import annotations

import gc
import os
import signal

from aiohttp import web

from nebula.config import load_settings
from nebula.web.serve import bind, serve_app
from tests.conftest import free_port


async def test_a_served_process_has_frozen_its_startup_objects() -> None:
    """Catches a serve that never freezes (every full collection walks all of it) or freezes
    only after it stops; the freeze happens before "ready" is said."""
    settings = load_settings({}, environ={})
    sock = bind(f"127.0.0.1:{free_port()}")
    frozen_when_ready: list[int] = []

    def ready() -> None:
        frozen_when_ready.append(gc.get_freeze_count())
        os.kill(os.getpid(), signal.SIGUSR1)  # stop at once

    gc.unfreeze()
    try:
        assert gc.get_freeze_count() == 0
        stopped_by = await serve_app(
            web.Application(), [sock], settings=settings, on_ready=ready, signals=[signal.SIGUSR1]
        )
    finally:
        gc.unfreeze()  # the rest of the test run collects as usual
        sock.close()
    assert stopped_by == signal.SIGUSR1
    assert frozen_when_ready and frozen_when_ready[0] > 10_000
