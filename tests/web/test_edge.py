"""nebula.web.edge: the one middleware and the prepare hooks, on a real aiohttp server with
nothing else in the application (the full app's behaviour through them is what the admin,
limits, listener and access-log tests check). Each test names the wrong implementation it
catches.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from nebula.config import load_settings
from nebula.errors import ProtocolError
from nebula.web.edge import add_prepare_hook, edge_middleware
from nebula.web.keys import SETTINGS


def _app(seen: list[str]) -> web.Application:
    app = web.Application(middlewares=[edge_middleware])
    app[SETTINGS] = load_settings({}, environ={})

    async def ok(_request: web.Request) -> web.Response:
        return web.Response(text="fine")

    async def refused(_request: web.Request) -> web.Response:
        raise ProtocolError("not an Omaha request")

    async def crash(_request: web.Request) -> web.Response:
        raise RuntimeError("a bug")

    app.router.add_get("/ok", ok)
    app.router.add_get("/refused", refused)
    app.router.add_get("/crash", crash)

    def first(request: web.Request, response: web.StreamResponse) -> None:
        seen.append(f"first {request.path} {response.status}")
        response.headers["X-First"] = "1"

    def second(request: web.Request, response: web.StreamResponse) -> None:
        seen.append(f"second {request.path} {response.status}")

    add_prepare_hook(app, first)
    add_prepare_hook(app, second)
    return app


async def test_hooks_run_in_order_once_on_every_answer() -> None:
    """Every hook sees every answer once, in the order added: a handler's, an error the
    middleware made of a NebulaError or of a crash, and aiohttp's own 404. Catches hooks run
    only for handlers' answers (error answers would lack the request id), a hook registered
    twice (one signal per hook), or the order lost."""
    seen: list[str] = []
    async with TestClient(TestServer(_app(seen))) as client:
        for path, status in (("/ok", 200), ("/refused", 400), ("/crash", 500), ("/none", 404)):
            seen.clear()
            response = await client.get(path)
            assert response.status == status, path
            assert response.headers.get("X-First") == "1", path
            assert seen == [f"first {path} {status}", f"second {path} {status}"]


async def test_errors_become_answers_and_limits_come_first() -> None:
    """A NebulaError is its own status with its words; a crash is a bare 500 that shows
    nothing of it; a request over the limits is refused before its handler runs. Catches an
    error mapping that lets exceptions through (aiohttp's 500 page), one that leaks the
    exception's text, or limits checked after the handler."""
    seen: list[str] = []
    async with TestClient(TestServer(_app(seen))) as client:
        refused = await client.get("/refused")
        assert refused.status == 400 and "not an Omaha request" in await refused.text()
        crash = await client.get("/crash")
        assert crash.status == 500 and "a bug" not in await crash.text()
        seen.clear()
        control = await client.get("/ok", params={"q": "a\x01b"})
        assert control.status == 400
        assert seen == ["first /ok 400", "second /ok 400"]  # answered, the handler never ran
        seen.clear()
        pads = {f"X-Pad-{i}": "x" * 4000 for i in range(20)}  # each line fine, together not
        big = await client.get("/ok", headers=pads)
        assert big.status == 431
        assert seen == ["first /ok 431", "second /ok 431"]
