"""Payload downloads, Nebula against nginx: the same file, the same load, in one run.

`python -m nebula.loadtest.payloads [--size-mb 200] [--duration 10] [--rounds 3]` does, on
127.0.0.1 only:

1. writes a payload of `--size-mb` MiB signed with a throwaway key into a temporary directory;
2. starts `nebula serve` on a temporary SQLite database trusting that key (one process, as
   nginx gets one worker) and uploads the payload through the admin API, as an operator would;
3. starts nginx (Debian's) with one worker, sendfile on and no access log, serving the very same
   file from a directory of its own;
4. fetches the file once from each and checks every byte (SHA-256) before anything is timed;
5. loads each with wrk (`--connections`, 2 threads, `--duration` seconds), alternating servers
   for `--rounds` rounds so that a noisy neighbour hurts both alike, and prints MiB/s per round
   and the median ratio of Nebula to nginx.

The generator is wrk in a process of its own; both servers are subprocesses in sessions of their
own, stopped with SIGTERM (then SIGKILL) whatever happens. Needs `nginx` and `wrk` on PATH
(Debian packages nginx-light or nginx, and wrk). Imports nebula.loadtest and nebula.crau.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from nebula import crau
from nebula.loadtest import fleet, servers
from nebula.store import db

PAYLOAD_NAME = "flatcar_production_update.gz"
WRK_THREADS = 2
_MIB = 1 << 20
_UNITS = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}

NGINX_CONF = """\
daemon off;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
{user}
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    client_body_temp_path {work}/nginx-body;
    proxy_temp_path {work}/nginx-proxy;
    fastcgi_temp_path {work}/nginx-fastcgi;
    uwsgi_temp_path {work}/nginx-uwsgi;
    scgi_temp_path {work}/nginx-scgi;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location = /healthz {{ return 200 "ok\\n"; }}
    }}
}}
"""


@dataclass(frozen=True, slots=True)
class Download:
    """One wrk run against one server."""

    server: str
    mib_per_s: float
    requests_per_s: float
    errors: int


def write_payload(path: Path, size: int, key: RSAPrivateKey) -> str:
    """A signed payload with `size` data bytes, streamed to `path`; its SHA-256 hex."""

    def chunks() -> Iterator[bytes]:
        left = size
        while left:
            n = min(left, 4 * _MIB)
            yield os.urandom(n)
            left -= n

    with path.open("wb") as f:
        crau.write_payload(f, [(2, key)], data=chunks(), data_size=size)
    digest = hashlib.sha256()
    with path.open("rb") as src:
        while chunk := src.read(_MIB):
            digest.update(chunk)
    return digest.hexdigest()


def nginx_conf(work: Path, root: Path, port: int) -> str:
    # Run as root, nginx would switch its worker to `nobody`, which cannot read a 0700 temp dir.
    user = "user root;" if os.geteuid() == 0 else ""
    return NGINX_CONF.format(work=work, root=root, port=port, user=user)


def parse_wrk(output: str) -> tuple[float, float, int]:
    """(bytes per second, requests per second, errors) from wrk's plain report."""
    transfer = re.search(r"Transfer/sec:\s+([\d.]+)([KMGT]?B)", output)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if transfer is None or rate is None:
        raise RuntimeError(f"wrk printed no rates:\n{output}")
    errors = 0
    if m := re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    ):
        errors += sum(int(g) for g in m.groups())
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", output):
        errors += int(m.group(1))
    return float(transfer.group(1)) * _UNITS[transfer.group(2)], float(rate.group(1)), errors


def run_wrk(url: str, connections: int, duration: int) -> tuple[float, float, int]:
    argv = [
        "wrk",
        f"-t{WRK_THREADS}",
        f"-c{connections}",
        f"-d{duration}s",
        "--timeout",
        "30s",
        url,
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    return parse_wrk(done.stdout)


def fetched_sha256(url: str) -> str:
    digest = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=60) as resp:
        while chunk := resp.read(_MIB):
            digest.update(chunk)
    return digest.hexdigest()


def _payload_url(base: str, token: str) -> str:
    request = urllib.request.Request(
        f"{base}/api/v1/packages", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=30) as resp:
        packages = json.load(resp)["packages"]
    (package,) = packages
    return str(package["codebase"]) + PAYLOAD_NAME


def measure(size_mb: int, duration: int, rounds: int, connections: int) -> list[Download]:
    for tool in ("nginx", "wrk"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is not installed (Debian: apt-get install nginx-light wrk)")
    results: list[Download] = []
    with tempfile.TemporaryDirectory(prefix="nebula-payloads-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        www = work / "www"
        www.mkdir()
        key = crau.make_rsa_key()
        key_file = work / "key.pub.pem"
        key_file.write_bytes(crau.public_pem(key))
        payload = www / PAYLOAD_NAME
        sha256 = write_payload(payload, size_mb * _MIB, key)

        db_url = f"sqlite:///{work / 'nebula.db'}"
        engine = db.create_engine(db_url)
        try:
            token = asyncio.run(fleet.prepare(engine, "payloads"))
        finally:
            asyncio.run(engine.dispose())
        port = servers.free_port()
        argv = servers.nebula_argv(port, db_url, work / "store", key_file, None)
        nebula = servers.start("nebula", argv, port, work)
        stack.callback(servers.stop, nebula)
        servers.wait_ready(nebula)
        asyncio.run(fleet.publish(nebula.url, token, payload))
        nebula_url = _payload_url(nebula.url, token)

        nginx_port = servers.free_port()
        conf = work / "nginx.conf"
        conf.write_text(nginx_conf(work, www, nginx_port))
        nginx = servers.start(
            "nginx", ["nginx", "-p", str(work), "-c", str(conf)], nginx_port, work
        )
        stack.callback(servers.stop, nginx)
        servers.wait_ready(nginx)
        nginx_url = f"{nginx.url}/{PAYLOAD_NAME}"

        for name, url in (("nebula", nebula_url), ("nginx", nginx_url)):
            got = fetched_sha256(url)
            if got != sha256:
                raise RuntimeError(f"{name} served other bytes: SHA-256 {got}, expected {sha256}")
        for _ in range(rounds):
            for name, url in (("nginx", nginx_url), ("nebula", nebula_url)):
                rate, per_s, errors = run_wrk(url, connections, duration)
                results.append(Download(name, rate / _MIB, per_s, errors))
                time.sleep(1)  # let the last connections close before the other server's turn
    return results


def report(results: list[Download], size_mb: int) -> tuple[str, float]:
    lines = [f"payload downloads, {size_mb} MiB file, wrk {WRK_THREADS} threads"]
    lines.append(f"{'round':>5}  {'server':<7} {'MiB/s':>9} {'req/s':>8} {'errors':>6}")
    ratios = []
    for i in range(0, len(results), 2):
        pair = results[i : i + 2]
        for r in pair:
            lines.append(
                f"{i // 2 + 1:>5}  {r.server:<7} {r.mib_per_s:>9.0f} {r.requests_per_s:>8.2f} "
                f"{r.errors:>6}"
            )
        by = {r.server: r for r in pair}
        ratios.append(by["nebula"].mib_per_s / by["nginx"].mib_per_s)
    ratio = statistics.median(ratios)
    spread = ", ".join(f"{r:.2f}" for r in ratios)
    lines.append(f"nebula / nginx throughput: {ratio:.2f} (median of rounds: {spread})")
    return "\n".join(lines), ratio


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=200)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=8)
    args = parser.parse_args(argv)
    if not (1 <= args.size_mb <= 4096 and 1 <= args.duration <= 300 and 1 <= args.rounds <= 10):
        parser.error("bounds: --size-mb 1..4096, --duration 1..300, --rounds 1..10")
    if not 1 <= args.connections <= 256:
        parser.error("bounds: --connections 1..256")
    try:
        results = measure(args.size_mb, args.duration, args.rounds, args.connections)
    except RuntimeError as exc:
        print(f"payload bench failed: {exc}", file=sys.stderr)
        return 1
    text, _ = report(results, args.size_mb)
    print(text)
    return 1 if any(r.errors for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
