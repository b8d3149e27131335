"""A real scrape (issue 10, item 4): Debian's Prometheus, started on loopback with a temporary
configuration and storage, scrapes a running Nebula (a real socket, SQLite and PostgreSQL); the
values read back through Prometheus' HTTP API are the ones Nebula counted.

Catches an exposition Prometheus cannot parse (a label or type it refuses: the target is then
down and nothing is stored), metric names or labels that differ from what the rules and the
dashboard query, and database-read gauges that a scrape does not see.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import free_port, require_tools
from tests.factories import Host

SCRAPE_WAIT = 25.0  # seconds for Prometheus to start and scrape (it scrapes every second)


def _config(target: str) -> str:
    return f"""global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: nebula
    static_configs:
      - targets: ["{target}"]
"""


async def _query(http: aiohttp.ClientSession, api: str, expr: str) -> list[dict[str, Any]]:
    async with http.get(f"{api}/api/v1/query", params={"query": expr}) as resp:
        body = await resp.json()
    assert body["status"] == "success", body
    return body["data"]["result"]  # type: ignore[no-any-return]


def _counted(text: str, name: str, **labels: str) -> float:
    """What Nebula's own /metrics says, summed over the series matching `labels`."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


async def test_prometheus_scrapes_nebula(server: str, tmp_path: Path) -> None:
    require_tools("prometheus")  # .ci/run installs Debian's prometheus, so CI runs this
    binary = shutil.which("prometheus")
    assert binary
    hosts = [Host(machine_id=f"{n:032x}", version="3815.2.0") for n in range(3)]
    async with aiohttp.ClientSession() as http:
        for host in hosts:
            async with http.post(f"{server}/v1/update/", data=host.check()) as resp:
                assert resp.status == 200
        async with http.get(f"{server}/metrics") as resp:
            ours = await resp.text()
        checks = _counted(ours, "nebula_omaha_requests_total", outcome="ok")
        instances = _counted(ours, "nebula_instances", group="stable", arch="amd64")
        assert (checks, instances) == (3, 3)

        config = tmp_path / "prometheus.yml"
        config.write_text(_config(server.removeprefix("http://")))
        port = free_port()
        api = f"http://127.0.0.1:{port}"
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=(tmp_path / "prometheus.log").open("wb"),
        )
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + SCRAPE_WAIT
            result: list[dict[str, Any]] = []
            while loop.time() < deadline and proc.poll() is None:
                try:
                    result = await _query(http, api, 'nebula_omaha_requests_total{outcome="ok"}')
                except aiohttp.ClientError:
                    result = []  # not listening yet
                if result:
                    break
                await asyncio.sleep(0.25)
            log = (tmp_path / "prometheus.log").read_text(errors="replace")[-2000:]
            assert result, f"no scrape within {SCRAPE_WAIT} s (exit {proc.poll()}): {log}"

            (sample,) = result
            assert sample["metric"]["job"] == "nebula"
            assert float(sample["value"][1]) == checks
            up = await _query(http, api, 'up{job="nebula"}')
            assert [float(s["value"][1]) for s in up] == [1.0]
            # The fleet as the dashboard reads it: hosts by version, from the database.
            fleet = await _query(
                http,
                api,
                "sum by (group, arch, version) (max by (app, group, arch, channel, version, "
                'status) (nebula_instances{group="stable", arch="amd64"}))',
            )
            assert [(s["metric"]["version"], float(s["value"][1])) for s in fleet] == [
                ("3815.2.0", instances)
            ]
            paused = await _query(http, api, 'nebula_rollout_paused{group="stable"}')
            assert {(s["metric"]["arch"], s["metric"]["kind"]) for s in paused} == {
                (arch, kind) for arch in ("amd64", "arm64") for kind in ("operator", "failure_gate")
            }
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
