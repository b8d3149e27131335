"""The Omaha endpoint hosts POST to: `/v1/update/` (and without the slash), under the secret
`omaha_prefix` when one is set.

Reads at most MAX_BODY bytes (413 beyond, before parsing anything; 408 when the body does not
arrive within the body timeout), parses with the hardened parser (400 with the reason), and
hands the request to the service. No token: hosts have none.
"""

from __future__ import annotations

import time

from aiohttp import web

from nebula.errors import ProtocolError, RequestTooLargeError, SlowRequestError
from nebula.omaha.build import build_response_cached
from nebula.omaha.parse import MAX_BODY, parse_request
from nebula.web.access import note_machine_id
from nebula.web.forwarded import Network, client_address
from nebula.web.keys import CLOCK, METRICS, SERVICE, SETTINGS, TRUSTED_PROXIES
from nebula.web.limits import read_body


async def handle_update(request: web.Request) -> web.Response:
    metrics = request.app[METRICS]
    started = time.perf_counter()
    outcome = "error"
    try:
        body = await read_body(request, MAX_BODY)
        parsed = parse_request(body)
        note_machine_id(request, next((a.machine_id for a in parsed.apps if a.machine_id), None))
        proxies: tuple[Network, ...] = request.app[TRUSTED_PROXIES]
        ip = client_address(request.remote, request.headers.get("X-Forwarded-For"), proxies)
        response = await request.app[SERVICE].handle(parsed, ip, request.app[CLOCK]())
        outcome = "ok"
        body = build_response_cached(response)
        return web.Response(body=body, content_type="text/xml", charset="utf-8")
    except RequestTooLargeError:
        outcome = "too_large"
        raise
    except ProtocolError:
        outcome = "bad_request"
        raise
    except SlowRequestError:
        outcome = "timeout"
        raise
    finally:
        metrics.count_omaha_request(outcome, time.perf_counter() - started)


def add_routes(app: web.Application) -> None:
    # Under the secret prefix when one is set: the plain path then does not exist (404).
    prefix = app[SETTINGS].omaha_prefix
    app.router.add_post(f"{prefix}/v1/update/", handle_update)
    app.router.add_post(f"{prefix}/v1/update", handle_update)
