"""What every request passes through on its way in and on its way out, one layer each way.

- `edge_middleware`, the application's one middleware, in this order:
  1. the admin listener: the admin API and /metrics only on the admin listener when one is set
     (nebula.web.api.listener_refusal);
  2. the request's limits: header budget, control characters (nebula.web.limits.check_limits);
  3. the admin token of /api/ routes (nebula.web.api.authorize);
  4. the handler;
  and whatever 2 to 4 raise becomes its answer (nebula.web.errors.error_answer).
- Prepare hooks: plain functions that see every answer just before its headers go out (the
  request id, the admin API's security headers, the payload routes' validators and counts),
  run by one `on_response_prepare` signal (`add_prepare_hook`).

Why one layer: each aiohttp middleware and each signal receiver is a coroutine created and
awaited for every request, and none of these awaits anything on a host's request; four of each
were a measurable share of a steady check-in's CPU (docs/benchmarks.md).

Imports nebula.web.api, nebula.web.errors and nebula.web.limits.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from aiohttp.typedefs import Handler

from nebula.web.api import authorize, listener_refusal
from nebula.web.errors import error_answer
from nebula.web.limits import check_limits

PrepareHook = Callable[[web.Request, web.StreamResponse], None]
_HOOKS: web.AppKey[list[PrepareHook]] = web.AppKey("prepare_hooks")


@web.middleware
async def edge_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    refused = listener_refusal(request)
    if refused is not None:
        return refused
    try:
        check_limits(request)
        if request.path.startswith("/api/") and (refused := await authorize(request)):
            return refused
        return await handler(request)
    except Exception as exc:
        response = error_answer(request, exc)
        if response is None:
            raise
        return response


def add_prepare_hook(app: web.Application, hook: PrepareHook) -> None:
    """Run `hook(request, response)` on every answer of `app`, after the hooks added before."""
    hooks = app.get(_HOOKS)
    if hooks is None:
        hooks = app[_HOOKS] = []
        run_hooks: list[PrepareHook] = hooks

        async def prepare(request: web.Request, response: web.StreamResponse) -> None:
            for each in run_hooks:
                each(request, response)

        app.on_response_prepare.append(prepare)
    hooks.append(hook)
