"""Logs (issue 10, item 6): one access line per request with its id, echoed as X-Request-Id;
the machine id of Omaha requests; never a token or a body; text or JSON; one line per grant,
pause and resume. Through the real HTTP app on SQLite and PostgreSQL; caplog reads the records.
Each test's docstring names the wrong implementations it catches.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import pytest

from nebula.config import load_settings
from nebula.errors import ConfigError
from nebula.web.access import _FRESH
from nebula.web.logs import JsonFormatter, formatter
from tests.factories import Host
from tests.test_rollout import (
    ERROR_HASH,
    NEW,
    OLD,
    STABLE,
    Client,
    auth,
    check,
    hosts,
    machine,
    omaha,
    post,
    release,  # noqa: F401 (fixture)
    set_policy,
)


def test_fresh_ids_differ_across_forked_workers() -> None:
    """The ids made when a request brings none are unique within a process and in a worker
    forked from it (nebula serve --workers). Catches a counter without a per-process prefix,
    or a prefix drawn once at import that every forked worker would share, counter and all."""
    ours = [_FRESH.next() for _ in range(3)]
    assert len(set(ours)) == 3 and all(len(i) == 32 and i.isalnum() for i in ours)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: send one fresh id and leave at once
        os.write(write, _FRESH.next().encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.close(read)
    os.waitpid(pid, 0)
    mine = _FRESH.next()
    assert len(child) == 32 and child != mine
    assert child[:16] != mine[:16]  # its own prefix, not ours with a copied counter


def access_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [r.fields for r in caplog.records if r.name == "nebula.access"]  # type: ignore[attr-defined]


async def test_one_line_per_request_with_its_id(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    """A sane incoming X-Request-Id is kept and echoed, an insane one (too long, spaces, a
    newline's escape) replaced by a fresh id that the answer and the line agree on; errors and
    unmatched paths get a line too, under the route pattern. Catches an id not echoed, a header
    passed through unchecked (log forging), a raw path as the route, or two lines per request."""
    with caplog.at_level(logging.INFO):
        kept = await client.get("/healthz", headers={"X-Request-Id": "edge-1.a:b_C"})
        insane = await client.get("/healthz", headers={"X-Request-Id": "x y" + "z" * 200})
        generated = await client.get("/readyz")
        missing = await client.get("/no/such/thing")
        payload = await client.get(f"/v1/payloads/{'0' * 36}/x.gz")
    assert kept.headers["X-Request-Id"] == "edge-1.a:b_C"
    replaced = insane.headers["X-Request-Id"]
    assert len(replaced) == 32 and replaced.isalnum()
    assert generated.headers["X-Request-Id"] != replaced
    lines = access_lines(caplog)
    assert [line["request_id"] for line in lines] == [
        r.headers["X-Request-Id"] for r in (kept, insane, generated, missing, payload)
    ]
    assert [(line["method"], line["route"], line["status"]) for line in lines] == [
        ("GET", "/healthz", 200),
        ("GET", "/healthz", 200),
        ("GET", "/readyz", 200),
        ("GET", "unmatched", 404),
        ("GET", "/v1/payloads/{package_id}/{name}", 404),
    ]
    assert all(line["duration_ms"] >= 0 and "machine_id" not in line for line in lines)
    text = [r.getMessage() for r in caplog.records if r.name == "nebula.access"]
    assert text[0].startswith("request_id=edge-1.a:b_C method=GET route=/healthz status=200 ")


async def test_omaha_line_names_the_host_never_a_body_or_token(
    client: Client, admin_token: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An Omaha request's line carries the host's machine id; nothing of its body (here a
    distinctive OEM) nor of an admin request's bearer token reaches any record. Catches logging
    headers or bodies, and an Omaha line without its host."""
    host = Host(machine_id=machine(7), version=OLD, oem="very-distinctive-oem")
    with caplog.at_level(logging.DEBUG):
        await omaha(client, host.check())
        resp = await client.get("/api/v1/groups", headers=auth(admin_token))
        assert resp.status == 200
    (update, admin) = access_lines(caplog)
    assert (update["route"], update["machine_id"]) == ("/v1/update/", machine(7))
    assert (admin["route"], admin["status"]) == ("/api/v1/groups", 200)
    assert "machine_id" not in admin
    for record in caplog.records:
        if not record.name.startswith(("nebula", "aiohttp")):
            continue  # the database driver's debug lines show its statements' parameters
        text = record.getMessage() + json.dumps(getattr(record, "fields", {}))
        assert admin_token not in text and "very-distinctive-oem" not in text


async def test_json_format(client: Client, caplog: pytest.LogCaptureFixture) -> None:
    """--log-format json: one JSON object per record with the access line's fields; a bad
    format is refused at load. Catches JSON that loses the fields, or a setting that accepts
    anything."""
    with caplog.at_level(logging.INFO):
        resp = await client.get("/healthz", headers={"X-Request-Id": "abc"})
    (record,) = [r for r in caplog.records if r.name == "nebula.access"]
    doc = json.loads(formatter("json", worker=2).format(record))
    assert doc["request_id"] == resp.headers["X-Request-Id"] == "abc"
    assert (doc["route"], doc["status"], doc["level"], doc["worker"]) == (
        "/healthz",
        200,
        "info",
        2,
    )
    assert doc["message"].startswith("request_id=abc ")
    assert isinstance(formatter("json"), JsonFormatter)
    assert not isinstance(formatter("text"), JsonFormatter)
    assert load_settings({"log_format": "json"}, environ={}).log_format == "json"
    assert load_settings({}, environ={"NEBULA_LOG_FORMAT": "json"}).log_format == "json"
    with pytest.raises(ConfigError, match="log_format"):
        load_settings({"log_format": "xml"}, environ={})


async def test_state_changes_log_one_line_each(
    client: Client,
    admin_token: str,
    release: str,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A grant, an operator's pause and resume, and a failure gate's pause: one line each, the
    retry of a grant none. Catches a missing line, or one line per place that knows (the
    transaction and the service, or the gate and the pause)."""
    await set_policy(client, admin_token, pause_on_failures=["1"])
    a, b = hosts(2)
    with caplog.at_level(logging.INFO):
        assert await check(client, a) == NEW
        assert await check(client, a) == NEW  # a retry: the same grant
        await post(client, admin_token, f"{STABLE}/pause", reason="lunch")
        await post(client, admin_token, f"{STABLE}/resume", reason="back")
        assert await check(client, b) == NEW
        await omaha(client, b.event(3, 0, ERROR_HASH))
    lines = [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith(("nebula.service", "nebula.store"))
    ]
    assert lines == [
        f"grant: host '{a.machine_id}' in group stable (amd64) to {NEW}",
        "group stable (amd64) paused by ops: 'lunch'",
        "group stable (amd64) resumed by ops: 'back'",
        f"grant: host '{b.machine_id}' in group stable (amd64) to {NEW}",
        lines[4],
    ]
    assert lines[4].startswith("group stable (amd64) paused by the failure gate: 'failure gate")
