"""How Nebula guards its listeners (issue 8 item 4): TLS from --tls-cert/--tls-key on every
listener, the secret path prefix of what hosts reach, the /metrics token, and no token in any
log line.

TLS is tested against a real `nebula serve` with a certificate made here (self-signed, trusted
in the client's context only); the rest against the app on a real socket, on both databases.
"""

from __future__ import annotations

import asyncio
import http.client
import logging
import ssl
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiohttp.test_utils import TestClient
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.x509.oid import NameOID
from lxml import etree

from nebula.config import load_settings
from nebula.errors import ConfigError
from nebula.store import db
from nebula.store.tokens import revoke_token
from nebula.web.app import create_app
from nebula.web.serve import runner_options, tls_context
from tests.cli.serving import start_serve
from tests.conftest import FakeClock, free_port
from tests.factories import Host, make_settings, make_token, payload_file
from tests.test_service import MAIN, NEW, OLD, point, upload

# -- TLS -------------------------------------------------------------------------------------------


def make_certificate(directory: Path, name: str = "nebula") -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost, and its key (PEM files)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(IPv4Address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    directory.mkdir(parents=True, exist_ok=True)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def _fetch(
    url: str,
    context: ssl.SSLContext | None,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, headers={"Connection": "close", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=10, context=context) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_tls_on_the_public_and_the_admin_listener(tmp_path: Path, key_file: Path) -> None:
    """A server that loaded the certificate for one listener only, or not at all, or spoke
    plain HTTP beside it, fails here; so does one whose answers name http:// payload URLs."""
    cert, key = make_certificate(tmp_path / "tls")
    port, admin_port = free_port(), free_port()
    db_url = f"sqlite:///{tmp_path / 'nebula.db'}"
    server = start_serve(
        tmp_path,
        port,
        "--db",
        db_url,
        "--workers",
        "1",
        "--admin-listen",
        f"127.0.0.1:{admin_port}",
        "--tls-cert",
        str(cert),
        "--tls-key",
        str(key),
        "--trusted-key",
        str(key_file),
    )
    try:
        server.wait_listening()
        assert f"https://127.0.0.1:{port}" in server.output()
        trusted = ssl.create_default_context(cafile=str(cert))
        token = asyncio.run(make_token(db_url))

        status, body = _fetch(
            f"https://127.0.0.1:{port}/v1/update/",
            trusted,
            Host(machine_id="ab" * 16, version=OLD).check(),
            {"Content-Type": "text/xml"},
        )
        assert status == 200
        assert etree.fromstring(body).tag == "response"
        status, body = _fetch(
            f"https://127.0.0.1:{admin_port}/api/v1/groups",
            trusted,
            headers={"Authorization": f"Bearer {token}"},
        )
        assert status == 200, body
        assert _fetch(f"https://127.0.0.1:{admin_port}/metrics", trusted)[0] == 200

        # A client that does not trust the certificate refuses the server, on both listeners.
        for p in (port, admin_port):
            with pytest.raises(urllib.error.URLError) as refused:
                _fetch(f"https://127.0.0.1:{p}/healthz", ssl.create_default_context())
            assert isinstance(refused.value.reason, ssl.SSLCertVerificationError)
        # Plain HTTP gets no answer: the port speaks TLS only.
        for p in (port, admin_port):
            with pytest.raises((urllib.error.URLError, http.client.HTTPException, OSError)):
                _fetch(f"http://127.0.0.1:{p}/healthz", None)
        assert server.stop() == 0
    finally:
        server.kill()


def test_tls_settings_refuse_half_or_broken_pairs(tmp_path: Path) -> None:
    cert, key = make_certificate(tmp_path / "a", "a")
    other_cert, _ = make_certificate(tmp_path / "b", "b")
    with pytest.raises(ConfigError, match="together"):
        load_settings({"tls_cert": str(cert)}, environ={})
    with pytest.raises(ConfigError, match="together"):
        load_settings({}, environ={"NEBULA_TLS_KEY": str(key)})
    with pytest.raises(ConfigError, match="no such file"):
        tls_context(load_settings({"tls_cert": str(tmp_path / "x"), "tls_key": str(key)}, {}))
    with pytest.raises(ConfigError, match="cannot use certificate"):
        tls_context(load_settings({"tls_cert": str(other_cert), "tls_key": str(key)}, {}))
    good = load_settings({"tls_cert": str(cert), "tls_key": str(key), "listen": ":8443"}, {})
    assert tls_context(good) is not None
    assert good.base_url == "https://127.0.0.1:8443"  # what payload URLs are built on
    assert tls_context(load_settings({}, {})) is None


# -- the secret path prefix ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "prefix"),
    [("/s3cr3t", "/s3cr3t"), ("s3cr3t/", "/s3cr3t"), ("/a/b-c_d.e~", "/a/b-c_d.e~")],
)
def test_the_prefix_is_normalized(raw: str, prefix: str) -> None:
    assert load_settings({"omaha_prefix": raw}, environ={}).omaha_prefix == prefix


@pytest.mark.parametrize("raw", ["/", "/a b", "/%2e", "/../x", "/a//b", "/v1", "/api/x", "/é"])
def test_a_prefix_that_cannot_be_one_is_refused(raw: str) -> None:
    with pytest.raises(ConfigError, match="omaha_prefix"):
        load_settings({"omaha_prefix": raw}, environ={})


async def test_the_omaha_endpoint_and_payloads_move_under_the_secret_prefix(
    db_url: str,
    tmp_path: Path,
    key_file: Path,
    clock: FakeClock,
    signing_key: RSAPrivateKey,
    admin_token: str,
    aiohttp_client: Any,
) -> None:
    """With omaha_prefix the plain Omaha path and the plain payload path are 404 (a server that
    added the prefixed route beside them would answer), and every payload URL an answer or the
    admin API names carries the prefix and serves the file."""
    settings = make_settings(db_url, tmp_path, key_file, omaha_prefix="/s3cr3t")
    client: TestClient[Any, Any] = await aiohttp_client(create_app(settings, clock=clock))
    main = payload_file(tmp_path / "upload", MAIN, signing_key, size=6_000)
    package = await upload(client, admin_token, NEW, [main])
    await point(client, admin_token, NEW)
    assert package["codebase"] == f"http://nebula.test/s3cr3t/v1/payloads/{package['id']}/"

    check = Host(machine_id="cd" * 16, version=OLD).check()
    headers = {"Content-Type": "text/xml"}
    for path in ("/v1/update/", "/v1/update"):
        resp = await client.post(path, data=check, headers=headers)
        assert resp.status == 404
    resp = await client.post("/s3cr3t/v1/update/", data=check, headers=headers)
    assert resp.status == 200
    doc = etree.fromstring(await resp.read())
    assert doc.find("app/updatecheck").get("status") == "ok"
    codebase = doc.find("app/updatecheck/urls/url").get("codebase")
    assert codebase == package["codebase"]

    resp = await client.get(urlsplit(codebase).path + MAIN)
    assert resp.status == 200 and await resp.read() == main.read_bytes()
    resp = await client.get(f"/v1/payloads/{package['id']}/{MAIN}")
    assert resp.status == 404
    # The admin API and the probes stay where they are.
    assert (await client.get("/healthz")).status == 200


HOST_PATHS = ("/v1/update", "/v1/payloads/", "/v1/release/", "/v1/ignition/", "/v1/extensions/")


def host_route_paths(app: Any) -> list[str]:
    """The path templates of every route that is not the admin API, a probe or /metrics."""
    paths = []
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("formatter") or info.get("path") or ""
        if not path.startswith("/api/") and path not in ("/metrics", "/healthz", "/readyz"):
            paths.append(path)
    return paths


async def test_every_host_route_moves_under_the_secret_prefix(
    db_url: str, tmp_path: Path, key_file: Path, clock: FakeClock, aiohttp_client: Any
) -> None:
    """Release files, host configs and sysext images are fetched by hosts as much as update
    checks are: a route left at its plain path (as they were) would bypass the prefix. Walks
    the router, so a new host route added without the prefix fails here too; and a host config
    is really served under the prefix, with the prefixed SERVER in it."""
    settings = make_settings(
        db_url, tmp_path, key_file, omaha_prefix="/s3cr3t", ignition_public=True
    )
    app = create_app(settings, clock=clock)
    paths = host_route_paths(app)
    assert paths and all(p.startswith("/s3cr3t/v1/") for p in paths), paths
    for plain in HOST_PATHS:
        assert any(p.startswith("/s3cr3t" + plain) for p in paths), plain
    client: TestClient[Any, Any] = await aiohttp_client(app)
    assert (await client.get("/v1/ignition/stable")).status == 404
    resp = await client.get("/s3cr3t/v1/ignition/stable")
    assert resp.status == 200, await resp.text()
    # update.conf is a data URL in the config: percent-encoded.
    assert "SERVER%3Dhttp%3A%2F%2Fnebula.test%2Fs3cr3t%2Fv1%2Fupdate%2F" in await resp.text()
    assert (await client.get("/v1/extensions/stable/docker/SHA256SUMS")).status == 404


# -- /metrics behind a token -----------------------------------------------------------------------


async def test_metrics_behind_a_token(
    db_url: str, tmp_path: Path, key_file: Path, clock: FakeClock, aiohttp_client: Any
) -> None:
    """A server that ignored metrics_token, took any bearer or a prefix of the token, fails."""
    secret = "m3tr1cs-" + "x" * 24
    settings = make_settings(db_url, tmp_path, key_file, metrics_token=secret)
    client: TestClient[Any, Any] = await aiohttp_client(create_app(settings, clock=clock))
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Bearer {secret[:-1]}"},
        {"Authorization": f"Basic {secret}"},
    ):
        resp = await client.get("/metrics", headers=headers)
        assert resp.status == 401, headers
        assert "nebula_" not in await resp.text()
    resp = await client.get("/metrics", headers={"Authorization": f"Bearer {secret}"})
    assert resp.status == 200 and "nebula_build_info" in await resp.text()
    # Without the setting it stays open, as before.
    open_settings = make_settings(db_url, tmp_path, key_file)
    other: TestClient[Any, Any] = await aiohttp_client(create_app(open_settings, clock=clock))
    assert (await other.get("/metrics")).status == 200


# -- no token in the log ---------------------------------------------------------------------------


async def test_no_token_reaches_any_log_line(
    db_url: str,
    tmp_path: Path,
    key_file: Path,
    clock: FakeClock,
    aiohttp_client: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Admin requests with a good, a wrong and a revoked token, a viewer's refused write, and
    /metrics with its token, all under DEBUG logging of every logger (SQLAlchemy's statements
    and parameters, aiohttp's access log included): no line holds any of the tokens. A server
    that logged the Authorization header, a failed token or the query's parameters fails."""
    caplog.set_level(logging.DEBUG)
    # SQLAlchemy holds its own loggers at WARNING unless asked (what echo=True does).
    caplog.set_level(logging.DEBUG, logger="sqlalchemy")
    metrics_secret = "metrics-" + "q" * 30
    settings = make_settings(db_url, tmp_path, key_file, metrics_token=metrics_secret)
    client: TestClient[Any, Any] = await aiohttp_client(
        create_app(settings, clock=clock), server_kwargs=runner_options(settings)
    )
    admin = await make_token(db_url, "ops", "admin")
    viewer = await make_token(db_url, "dash", "viewer")
    revoked = await make_token(db_url, "old", "admin")
    engine = db.create_engine(db_url)
    try:
        async with db.transaction(db.session_factory(engine)) as session:
            assert await revoke_token(session, "old", datetime.now(UTC))
    finally:
        await engine.dispose()
    wrong = "nbl_" + "w" * 40

    def bearer(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    assert (await client.get("/api/v1/groups", headers=bearer(admin))).status == 200
    assert (await client.get("/api/v1/groups", headers=bearer(wrong))).status == 401
    assert (await client.get("/api/v1/groups", headers=bearer(revoked))).status == 401
    resp = await client.put(
        "/api/v1/channels/stable", json={"arch": "amd64", "version": NEW}, headers=bearer(viewer)
    )
    assert resp.status == 403
    resp = await client.put(
        "/api/v1/channels/stable", json={"arch": "amd64", "version": NEW}, headers=bearer(admin)
    )
    assert resp.status in (200, 400, 404)  # no such package: refused, and logged as such
    assert (await client.get("/metrics", headers=bearer(metrics_secret))).status == 200
    assert (await client.get("/metrics", headers=bearer(metrics_secret + "x"))).status == 401

    lines = [r.getMessage() for r in caplog.records]
    assert any("/api/v1/groups" in line for line in lines), "the access log was not captured"
    assert any("api_tokens" in line for line in lines), "SQLAlchemy's log was not captured"
    for secret in (admin, viewer, revoked, wrong, metrics_secret):
        leaked = [line for line in lines if secret in line]
        assert leaked == [], f"a token was logged: {leaked[:3]}"
