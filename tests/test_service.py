"""The Omaha endpoint through the real HTTP app, on SQLite and PostgreSQL (contract §2-§4, §7).

Packages are set up the way an operator does it (admin API upload, channel pointer); hosts are
the `Host` simulator; what Nebula recorded is read back from the database with SQLAlchemy.
Each test's docstring or comments name the wrong implementation it would catch.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from lxml import etree
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from nebula.metrics import Metrics
from nebula.omaha.parse import MAX_BODY, parse_request
from nebula.service import OmahaService
from nebula.store.catalog import CatalogCache
from nebula.store.db import session_factory
from nebula.store.models import Event, Instance, InstanceApp
from tests.conftest import FakeClock
from tests.factories import FLATCAR_APP_ID, Host, payload_file

OLD, NEW, NEWER = "3815.2.0", "4152.2.3", "4230.0.0"
MAIN = "flatcar_production_update.gz"
STABLE_AMD64 = "9a2deb70-37be-4026-853f-bfdd6b347bbe"
STABLE_ARM64 = "11a585f6-9418-4df0-8863-78b2fd3240f8"
SELF_HOSTED = 1 << 28
NEW_BOOT = "{7b2e7e0e-5f0a-4c59-9d7e-1f2a3b4c5d6e}"

Client = Any  # aiohttp TestClient


# -- helpers ---------------------------------------------------------------------------------------


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def upload(
    client: Client,
    token: str,
    version: str,
    files: list[Path],
    *,
    arch: str = "amd64",
    from_version: str | None = None,
) -> dict[str, Any]:
    """POST /api/v1/packages/upload: the main payload part, then the extension parts."""
    form = aiohttp.FormData()
    for n, path in enumerate(files):
        form.add_field(
            "payload" if n == 0 else "extension",
            path.read_bytes(),
            filename=path.name,
            content_type="application/octet-stream",
        )
    params = {"version": version, "arch": arch}
    if from_version is not None:
        params["from_version"] = from_version
    resp = await client.post(
        "/api/v1/packages/upload", params=params, data=form, headers=_auth(token)
    )
    assert resp.status == 201, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


async def point(
    client: Client, token: str, version: str, arch: str = "amd64", channel: str = "stable"
) -> None:
    resp = await client.put(
        f"/api/v1/channels/{channel}",
        json={"arch": arch, "version": version},
        headers=_auth(token),
    )
    assert resp.status == 200, await resp.text()


async def omaha(client: Client, body: bytes) -> etree._Element:
    resp = await client.post("/v1/update/", data=body, headers={"Content-Type": "text/xml"})
    assert resp.status == 200, await resp.text()
    assert resp.content_type == "text/xml"
    return etree.fromstring(await resp.read())


def check_of(doc: etree._Element, index: int = 0) -> etree._Element:
    check = doc.findall("app")[index].find("updatecheck")
    assert check is not None
    return check


def b64_sha256(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def b64_sha1(data: bytes) -> str:
    return base64.b64encode(hashlib.sha1(data).digest()).decode()


async def state_of(engine: AsyncEngine, machine_id: str) -> InstanceApp | None:
    async with session_factory(engine)() as session:
        return await session.get(InstanceApp, (machine_id, FLATCAR_APP_ID))


async def instance_of(engine: AsyncEngine, machine_id: str) -> Instance | None:
    async with session_factory(engine)() as session:
        return await session.get(Instance, machine_id)


async def events_of(engine: AsyncEngine, machine_id: str) -> list[Event]:
    async with session_factory(engine)() as session:
        stmt = select(Event).where(Event.instance_id == machine_id).order_by(Event.id)
        return list((await session.execute(stmt)).scalars())


async def count(engine: AsyncEngine, table: str) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one())


async def sql(engine: AsyncEngine, statement: str, **params: Any) -> None:
    """A direct change, as another replica or an operator tool would make it, plus the stamp
    bump that tells every catalog cache to reload."""
    async with engine.begin() as conn:
        await conn.execute(text(statement), params)
        await conn.execute(text("UPDATE config_stamp SET stamp = stamp + 1"))


def machine(n: int) -> str:
    return f"{n:032x}"


@dataclass
class Release:
    version: str
    main: Path
    extensions: list[Path]
    package: dict[str, Any]


@pytest.fixture
async def release(
    client: Client, admin_token: str, tmp_path: Path, signing_key: RSAPrivateKey
) -> Release:
    """NEW uploaded (main payload and two extensions) and stable amd64 pointed at it."""
    d = tmp_path / "upload" / NEW
    main = payload_file(d, MAIN, signing_key, size=20_000)
    exts = [
        payload_file(d, "oem-azure.gz", signing_key, size=3_000),
        payload_file(d, "flatcar-podman.gz", signing_key, size=5_000),
    ]
    package = await upload(client, admin_token, NEW, [main, *exts])
    await point(client, admin_token, NEW)
    return Release(NEW, main, exts, package)


# -- the answer to an update check -----------------------------------------------------------------


async def test_older_host_gets_the_package(client: Client, release: Release) -> None:
    host = Host(machine_id=machine(1), version=OLD)
    doc = await omaha(client, host.check())

    assert doc.tag == "response" and doc.get("protocol") == "3.0"
    assert doc.nsmap == {}
    (app,) = doc.findall("app")
    assert app.get("appid") == "{" + FLATCAR_APP_ID + "}"  # echoed as sent
    assert app.get("status") == "ok"
    assert app.find("ping").get("status") == "ok"
    assert [e.get("status") for e in app.findall("event")] == ["ok"]
    check = check_of(doc)
    assert check.get("status") == "ok"

    (url,) = check.findall("urls/url")
    codebase = url.get("codebase")
    assert codebase.startswith("http://nebula.test/") and codebase.endswith("/")
    manifest = check.find("manifest")
    assert manifest.get("version") == NEW

    packages = manifest.findall("packages/package")
    files = [release.main, *release.extensions]
    assert [p.get("name") for p in packages] == [f.name for f in files]
    assert [p.get("required") for p in packages] == ["true", "false", "false"]
    for p, f in zip(packages, files, strict=True):
        data = f.read_bytes()
        assert p.get("size") == str(len(data))
        assert p.get("hash") == b64_sha1(data)
        assert p.get("hash_sha256") == hashlib.sha256(data).hexdigest()

    (action,) = manifest.findall("actions/action")
    assert action.get("event") == "postinstall"
    assert action.get("sha256") == b64_sha256(release.main.read_bytes())
    assert len(action.get("sha256")) == 44
    assert action.get("DisablePayloadBackoff") == "true"
    assert action.get("IsDeltaPayload") is None

    # The codebase really serves the files under the names listed.
    for f in files:
        resp = await client.get(urlsplit(codebase).path + f.name)
        assert resp.status == 200
        assert await resp.read() == f.read_bytes()


@pytest.mark.parametrize("version", [NEW, NEW + "+dev", NEWER, "9999.0.0"])
async def test_current_or_newer_host_gets_noupdate(
    client: Client, release: Release, engine: AsyncEngine, version: str
) -> None:
    """A host on the target or past it is never offered it: a server that compared versions as
    strings, or offered any version that differs, would send a downgrade here."""
    host = Host(machine_id=machine(2), version=version)
    doc = await omaha(client, host.check())
    check = check_of(doc)
    assert check.get("status") == "noupdate"
    assert len(check) == 0  # no urls, no manifest
    state = await state_of(engine, host.machine_id)
    assert state is not None
    assert state.status == "idle"
    assert state.granted_version is None
    assert state.hold_reason is None


async def test_no_target_gives_noupdate(client: Client, engine: AsyncEngine) -> None:
    doc = await omaha(client, Host(machine_id=machine(3), version=OLD).check())
    assert check_of(doc).get("status") == "noupdate"


async def test_poll_interval_on_every_answer(
    aiohttp_client: Any,
    db_url: str,
    tmp_path: Path,
    key_file: Path,
    clock: FakeClock,
    release: Release,
) -> None:
    from nebula.web.app import create_app
    from tests.factories import make_settings

    settings = make_settings(db_url, tmp_path, key_file, poll_interval=3600)
    other = await aiohttp_client(create_app(settings, clock=clock))
    for version in (OLD, NEW):  # an update and a noupdate: update_engine needs it on each
        doc = await omaha(other, Host(machine_id=machine(4), version=version).check())
        assert check_of(doc).get("PollInterval") == "3600"


async def test_delta_only_for_its_source_version(
    client: Client,
    admin_token: str,
    release: Release,
    tmp_path: Path,
    signing_key: RSAPrivateKey,
) -> None:
    d = tmp_path / "upload" / "delta"
    delta = payload_file(d, MAIN, signing_key, size=6_000, delta=True)
    exts = [tmp_path / "upload" / NEW / e.name for e in release.extensions]
    await upload(client, admin_token, NEW, [delta, *exts], from_version=OLD)

    def is_delta(doc: etree._Element) -> bool:
        check = check_of(doc)
        assert check.get("status") == "ok"
        action = check.find("manifest/actions/action")
        main = check.find("manifest/packages/package")
        sha = main.get("hash_sha256")
        if action.get("IsDeltaPayload") == "true":
            assert sha == hashlib.sha256(delta.read_bytes()).hexdigest()
            assert action.get("sha256") == b64_sha256(delta.read_bytes())
            return True
        assert action.get("IsDeltaPayload") is None
        assert sha == hashlib.sha256(release.main.read_bytes()).hexdigest()
        return False

    cases = [
        (Host(machine_id=machine(10), version=OLD, delta_okay=True), True),
        (Host(machine_id=machine(11), version=OLD, delta_okay=False), False),
        (Host(machine_id=machine(12), version="3815.1.0", delta_okay=True), False),
        (Host(machine_id=machine(13), version="3815.2.0+dev", delta_okay=True), False),
        (Host(machine_id=machine(14), version="3510.2.1", delta_okay=False), False),
    ]
    for host, expected in cases:
        assert is_delta(await omaha(client, host.check())) is expected, host
    # A regrant (the host retries) gives the same delta again.
    assert is_delta(await omaha(client, cases[0][0].check())) is True


async def test_delta_uploaded_alone_is_offered_with_the_targets_extensions(
    aiohttp_client: Any,
    db_url: str,
    tmp_path: Path,
    key_file: Path,
    clock: FakeClock,
    client: Client,
    admin_token: str,
    release: Release,
    signing_key: RSAPrivateKey,
) -> None:
    """Contract §6: post-install looks its extensions up in the response it was given. A delta
    uploaded without them is offered with the extension payloads uploaded with its target's
    full payload, served under the delta's codebase (update_engine fetches codebase + name).
    Catches a delta offered bare (error 5 in an air gap), one skipped for the full payload, and
    extension URLs that 404 under the delta's codebase (here, or on a replica whose catalog
    predates the delta)."""
    from nebula.web.app import create_app
    from tests.factories import make_settings

    stale = await aiohttp_client(
        create_app(make_settings(db_url, tmp_path, key_file, cache_ttl=3600.0), clock=clock)
    )
    await omaha(stale, Host(machine_id=machine(16), version=OLD).check())  # catalog loaded
    delta = payload_file(tmp_path / "upload" / "delta", MAIN, signing_key, size=6_000, delta=True)
    await upload(client, admin_token, NEW, [delta], from_version=OLD)
    doc = await omaha(client, Host(machine_id=machine(15), version=OLD, delta_okay=True).check())
    check = check_of(doc)
    assert check.find("manifest/actions/action").get("IsDeltaPayload") == "true"
    packages = check.findall("manifest/packages/package")
    assert [p.get("name") for p in packages] == [MAIN, "oem-azure.gz", "flatcar-podman.gz"]
    assert [p.get("required") for p in packages] == ["true", "false", "false"]
    wanted = [delta, *release.extensions]
    for package, path in zip(packages, wanted, strict=True):
        data = path.read_bytes()
        assert package.get("hash_sha256") == hashlib.sha256(data).hexdigest()
        assert package.get("hash") == b64_sha1(data)
        assert package.get("size") == str(len(data))
    codebase = urlsplit(check.find("urls/url").get("codebase")).path
    assert codebase != urlsplit(release.package["codebase"]).path  # the delta's own
    for server in (client, stale):
        for package, path in zip(packages, wanted, strict=True):
            resp = await server.get(codebase + package.get("name"))
            assert resp.status == 200, (codebase, package.get("name"))
            assert await resp.read() == path.read_bytes()
    # A host that takes no deltas still gets the full payload.
    doc = await omaha(client, Host(machine_id=machine(17), version=OLD).check())
    assert check_of(doc).find("manifest/actions/action").get("IsDeltaPayload") is None


def _external(version: str, base_url: str, names: list[str], **extra: Any) -> dict[str, Any]:
    files = []
    for name in names:
        data = f"{base_url}{name}".encode() * 50
        files.append(
            {
                "name": name,
                "size": len(data),
                "sha1": hashlib.sha1(data).hexdigest(),
                "sha256": hashlib.sha256(data).hexdigest(),
            }
        )
    return {"version": version, "arch": "amd64", "base_url": base_url, "files": files, **extra}


@pytest.mark.parametrize(
    ("delta_base", "offered"),
    [
        ("https://cdn.example/flatcar/4152.2.3/", True),  # beside the target's extensions
        ("https://other.example/deltas/", False),  # the extensions are not under it
        (None, False),  # stored by Nebula, the extensions only elsewhere
    ],
)
async def test_delta_is_offered_only_where_the_extensions_are_beside_it(
    client: Client,
    admin_token: str,
    tmp_path: Path,
    signing_key: RSAPrivateKey,
    delta_base: str | None,
    offered: bool,
) -> None:
    """Hosts fetch every file from the one codebase: a delta whose target's extensions cannot
    be reached under it is not offered (the full package is)."""
    full_base = "https://cdn.example/flatcar/4152.2.3/"
    resp = await client.post(
        "/api/v1/packages",
        json=_external(NEW, full_base, [MAIN, "oem-azure.gz"]),
        headers=_auth(admin_token),
    )
    assert resp.status == 201, await resp.text()
    await point(client, admin_token, NEW)
    if delta_base is None:
        delta = payload_file(tmp_path / "d", MAIN, signing_key, size=6_000, delta=True)
        await upload(client, admin_token, NEW, [delta], from_version=OLD)
    else:
        resp = await client.post(
            "/api/v1/packages",
            json=_external(NEW, delta_base, ["delta.gz"], from_version=OLD),
            headers=_auth(admin_token),
        )
        assert resp.status == 201, await resp.text()
    doc = await omaha(client, Host(machine_id=machine(18), version=OLD, delta_okay=True).check())
    check = check_of(doc)
    is_delta = check.find("manifest/actions/action").get("IsDeltaPayload") == "true"
    assert is_delta is offered
    names = [p.get("name") for p in check.findall("manifest/packages/package")]
    assert names[1:] == ["oem-azure.gz"]
    assert check.find("urls/url").get("codebase") == (delta_base if offered else full_base)


# -- applications and tracks --------------------------------------------------------------------


def _two_apps(first_app_id: str, host: Host) -> bytes:
    """A request with an extra app before the host's Flatcar app."""
    body = host.check().decode()
    head, sep, rest = body.partition("    <app ")
    extra = (
        f'    <app appid="{first_app_id}" version="1.2.3" track="stable" '
        f'machineid="{host.machine_id}">\n'
        '        <ping active="1"></ping>\n        <updatecheck></updatecheck>\n'
        '        <event eventtype="3" eventresult="2" previousversion=""></event>\n'
        "    </app>\n"
    )
    return (head + extra + sep + rest).encode()


async def test_unknown_app_next_to_a_known_one(
    client: Client, release: Release, engine: AsyncEngine
) -> None:
    host = Host(machine_id=machine(20), version=OLD)
    unknown = "{6A1B2C3D-0000-4000-8000-00000000BEEF}"
    doc = await omaha(client, _two_apps(unknown, host))
    first, second = doc.findall("app")
    assert first.get("appid") == unknown
    assert first.get("status") == "error-unknownApplication"
    assert first.find("ping").get("status") == "ok"
    assert [e.get("status") for e in first.findall("event")] == ["ok"]
    assert first.find("updatecheck") is None
    assert second.get("status") == "ok"
    assert check_of(doc, 1).get("status") == "ok"
    assert check_of(doc, 1).find("manifest").get("version") == NEW
    # Only the known app's state and event were recorded.
    async with session_factory(engine)() as session:
        apps = (await session.execute(select(InstanceApp.app_id))).scalars().all()
    assert apps == [FLATCAR_APP_ID]


async def test_overlong_machine_id_refuses_its_app_only(
    client: Client, release: Release, engine: AsyncEngine
) -> None:
    """One <app> whose machine id no real host sends, beside a good one: the bad app gets an
    error status (its ping and event acknowledged), the good one its update. Catches a whole
    request refused with 400 for one app, and anything recorded for the refused app."""
    host = Host(machine_id=machine(22), version=OLD)
    bad = Host(machine_id="f" * 65, version=OLD).check().decode()
    app = bad[bad.index("    <app ") : bad.index("</app>") + len("</app>\n")]
    body = host.check().decode()
    head, sep, rest = body.partition("    <app ")
    doc = await omaha(client, (head + app + sep + rest).encode())
    first, second = doc.findall("app")
    assert first.get("status") == "error-invalidRequest"
    assert first.find("ping").get("status") == "ok"
    assert [e.get("status") for e in first.findall("event")] == ["ok"]
    assert second.get("status") == "ok"
    assert check_of(doc, 1).find("manifest").get("version") == NEW
    async with session_factory(engine)() as session:
        ids = (await session.execute(select(InstanceApp.instance_id))).scalars().all()
    assert ids == [host.machine_id]


async def test_appid_matches_case_and_braces(client: Client, release: Release) -> None:
    for n, app_id in enumerate((FLATCAR_APP_ID.upper(), FLATCAR_APP_ID, f" {{{FLATCAR_APP_ID}}} ")):
        host = Host(machine_id=machine(21 + n), version=OLD, app_id=app_id)
        doc = await omaha(client, host.check())
        assert doc.find("app").get("appid") == app_id
        assert check_of(doc).get("status") == "ok"


async def test_unknown_track(client: Client, release: Release, engine: AsyncEngine) -> None:
    """error-unknownTrack, not a silent noupdate: the host's GROUP is wrong and should fail loudly
    (and not "stable" by default: a typo must not update a host from another channel)."""
    for n, track in enumerate(("nightly", "3fe10490-dd73-4b49-b72a-28ac19acfcd0")):
        doc = await omaha(
            client, Host(machine_id=machine(30 + n), version=OLD, track=track).check()
        )
        assert doc.find("app").get("status") == "ok"
        assert check_of(doc).get("status") == "error-unknownTrack"
        assert len(check_of(doc)) == 0


async def test_arm64_legacy_uuid_on_amd64_is_unknown(client: Client, release: Release) -> None:
    host = Host(machine_id=machine(33), version=OLD, track=STABLE_ARM64)
    assert check_of(await omaha(client, host.check())).get("status") == "error-unknownTrack"


@pytest.mark.parametrize(
    "track", [STABLE_AMD64, "{" + STABLE_AMD64 + "}", "{" + STABLE_AMD64.upper() + "}", ""]
)
async def test_legacy_group_uuid_and_empty_track_are_stable(
    client: Client, release: Release, engine: AsyncEngine, track: str
) -> None:
    host = Host(machine_id=machine(40), version=OLD, track=track)
    check = check_of(await omaha(client, host.check()))
    assert check.get("status") == "ok"
    assert check.find("manifest").get("version") == NEW
    state = await state_of(engine, host.machine_id)
    assert state is not None and state.group_id == STABLE_AMD64


async def test_arm64_host_uses_the_arm64_channel(
    client: Client,
    admin_token: str,
    release: Release,
    engine: AsyncEngine,
    tmp_path: Path,
    signing_key: RSAPrivateKey,
) -> None:
    arm = payload_file(tmp_path / "upload" / "arm64", MAIN, signing_key, size=7_000)
    await upload(client, admin_token, NEW, [arm], arch="arm64")
    await point(client, admin_token, NEW, arch="arm64")

    host = Host(machine_id=machine(50), version=OLD, board="arm64-usr")
    check = check_of(await omaha(client, host.check()))
    assert check.get("status") == "ok"
    (package,) = check.findall("manifest/packages/package")  # not amd64's extensions
    assert package.get("hash_sha256") == hashlib.sha256(arm.read_bytes()).hexdigest()
    state = await state_of(engine, host.machine_id)
    assert state is not None and state.group_id == STABLE_ARM64

    # And an arm64 host is not offered amd64's package when arm64 stable points nowhere.
    await sql(engine, "UPDATE channels SET package_id = NULL WHERE arch = 'arm64'")
    other = Host(machine_id=machine(51), version=OLD, board="arm64-usr")
    assert check_of(await omaha(client, other.check())).get("status") == "noupdate"


def _stub_request(machine_id: str, *, update_check: bool) -> bytes:
    check = "        <updatecheck></updatecheck>\n" if update_check else ""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<request protocol="3.0" version="FlatcarUpdateEngine-0.1.0.0" '
        'updaterversion="FlatcarUpdateEngine-0.1.0.0" installsource="scheduler" ismachine="1">\n'
        f'    <os version="Chateau" platform="CoreOS" sp="{OLD}"></os>\n'
        f'    <app appid="{{{FLATCAR_APP_ID}}}" version="{OLD}" track="stable" '
        f'bootid="{{0c288430-2504-4db4-913a-8c3de52afd07}}" oem="" machineid="{machine_id}" '
        'machinealias="" lang="en-US" hardware_class="" delta_okay="false" >\n'
        f"{check}"
        '        <event eventtype="3" eventresult="2" previousversion=""></event>\n'
        "    </app>\n</request>\n"
    ).encode()


async def test_update_engine_stub(client: Client, release: Release, engine: AsyncEngine) -> None:
    """No board, a bare sp, no oemversion/alephversion: still a stable amd64 host."""
    mid = machine(60)
    doc = await omaha(client, _stub_request(mid, update_check=False))
    app = doc.find("app")
    assert app.get("status") == "ok"
    assert [e.get("status") for e in app.findall("event")] == ["ok"]
    assert app.find("updatecheck") is None
    state = await state_of(engine, mid)
    assert state is not None and state.group_id == STABLE_AMD64
    assert state.version == OLD  # what the stub reports is all we learn of a diskless host
    # Its one event is the routine 3/2: acknowledged (above), not logged.
    assert await events_of(engine, mid) == []
    # With an update check it is answered like any amd64 host.
    check = check_of(await omaha(client, _stub_request(mid, update_check=True)))
    assert check.get("status") == "ok"


# -- the status machine -------------------------------------------------------------------------


async def test_full_update_cycle(
    client: Client, release: Release, engine: AsyncEngine, clock: FakeClock
) -> None:
    host = Host(machine_id=machine(70), version=OLD, alias="web-1")
    granted_at = clock.now
    assert check_of(await omaha(client, host.check())).get("status") == "ok"
    state = await state_of(engine, host.machine_id)
    assert state is not None
    assert (state.status, state.granted_version, state.version) == ("granted", NEW, OLD)
    assert state.granted_at == granted_at
    assert state.granted_package_id == release.package["id"]

    steps = [((13, 1), "downloading"), ((14, 1), "downloaded"), ((3, 1), "installed")]
    for (event_type, result), status in steps:
        clock.advance(minutes=1)
        doc = await omaha(client, host.event(event_type, result))
        assert [e.get("status") for e in doc.findall("app/event")] == ["ok"]
        assert doc.find("app/updatecheck") is None
        state = await state_of(engine, host.machine_id)
        assert state is not None and state.status == status
        assert state.status_changed_at == clock.now

    # Waiting for its reboot, the host only pings.
    clock.advance(minutes=30)
    doc = await omaha(client, host.ping())
    assert doc.find("app/ping").get("status") == "ok"
    assert doc.find("app/event") is None and doc.find("app/updatecheck") is None
    state = await state_of(engine, host.machine_id)
    assert state is not None and state.status == "installed"

    # Rebooted into NEW: a new boot id and 3/2 previousversion=OLD.
    clock.advance(minutes=5)
    host.version, host.boot_id = NEW, NEW_BOOT
    assert check_of(await omaha(client, host.check(previous_version=OLD))).get("status") == (
        "noupdate"
    )
    state = await state_of(engine, host.machine_id)
    assert state is not None
    assert (state.status, state.version, state.completed_at) == ("complete", NEW, clock.now)
    assert state.boot_id == NEW_BOOT.strip("{}")
    assert state.last_error_code is None

    events = await events_of(engine, host.machine_id)
    # The routine 3/2 of the first check is not logged; the one naming the old version is.
    assert [(e.event_type, e.event_result) for e in events] == [(13, 1), (14, 1), (3, 1), (3, 2)]
    assert events[-1].previous_version == OLD and events[-1].version == NEW
    assert all(e.error_code is None and e.base_code is None for e in events)
    assert all(e.group_id == STABLE_AMD64 for e in events)

    # Later checks (previousversion="") change nothing: no second completion.
    completed_at = clock.now
    clock.advance(minutes=45)
    await omaha(client, host.check())
    state = await state_of(engine, host.machine_id)
    assert state is not None
    assert (state.status, state.completed_at) == ("complete", completed_at)


async def test_error_event(client: Client, release: Release, engine: AsyncEngine) -> None:
    host = Host(machine_id=machine(80), version=OLD)
    await omaha(client, host.check())
    await omaha(client, host.event(13, 1))
    await omaha(client, host.event(3, 0, 268435466))  # 10 (hash mismatch) | 1<<28
    state = await state_of(engine, host.machine_id)
    assert state is not None
    assert (state.status, state.last_error_code) == ("error", 10)
    assert state.last_error_at is not None
    event = (await events_of(engine, host.machine_id))[-1]
    assert (event.error_code, event.base_code, event.flags) == (268435466, 10, 268435456)
    # A failed host may try again: the next check is a new grant.
    assert check_of(await omaha(client, host.check())).get("status") == "ok"
    state = await state_of(engine, host.machine_id)
    assert state is not None and state.status == "granted"


async def test_rollback_is_not_offered_again(
    client: Client,
    admin_token: str,
    release: Release,
    engine: AsyncEngine,
    tmp_path: Path,
    signing_key: RSAPrivateKey,
) -> None:
    host = Host(machine_id=machine(90), version=OLD)
    await omaha(client, host.check())
    for event_type, result in ((13, 1), (14, 1), (3, 1)):
        await omaha(client, host.event(event_type, result))
    # Rebooted, but came back on OLD: 3/0 errorcode=44|1<<28 in the first check.
    host.boot_id = NEW_BOOT
    rollback = '<event eventtype="3" eventresult="0" errorcode="268435500"></event>'
    check = check_of(await omaha(client, host.check(event=rollback)))
    assert check.get("status") == "noupdate"
    state = await state_of(engine, host.machine_id)
    assert state is not None
    assert (state.status, state.last_error_code, state.hold_reason) == (
        "rolled_back",
        44,
        "rolled_back",
    )
    assert (await events_of(engine, host.machine_id))[-1].base_code == 44
    # Later checks still do not offer NEW (offering it would loop install/reboot/rollback).
    for _ in range(2):
        assert check_of(await omaha(client, host.check())).get("status") == "noupdate"
    # A newer release is offered.
    newer = payload_file(tmp_path / "upload" / NEWER, MAIN, signing_key, size=9_000)
    await upload(client, admin_token, NEWER, [newer])
    await point(client, admin_token, NEWER)
    check = check_of(await omaha(client, host.check()))
    assert check.get("status") == "ok" and check.find("manifest").get("version") == NEWER


async def test_forged_events_change_nothing(
    client: Client, release: Release, engine: AsyncEngine
) -> None:
    """A host never granted anything sends download/install events, then claims NEW: it is not
    counted as updated (a server that applied every event would mark it installed/complete)."""
    host = Host(machine_id=machine(100), version=OLD)
    for event_type, result in ((13, 1), (14, 1), (3, 1)):
        doc = await omaha(client, host.event(event_type, result))
        assert doc.find("app/event").get("status") == "ok"
    await omaha(client, host.event(3, 0, 44 | SELF_HOSTED))
    state = await state_of(engine, host.machine_id)
    assert state is not None
    assert (state.status, state.granted_version, state.last_error_code) == ("new", None, None)
    events = await events_of(engine, host.machine_id)
    assert [(e.event_type, e.event_result) for e in events] == [(13, 1), (14, 1), (3, 1), (3, 0)]

    host.version, host.boot_id = NEW, NEW_BOOT
    await omaha(client, host.check(previous_version=OLD))
    state = await state_of(engine, host.machine_id)
    assert state is not None
    assert state.status == "idle" and state.completed_at is None


async def test_paused_group_holds_but_regrants(
    client: Client, release: Release, engine: AsyncEngine
) -> None:
    """A pause answers noupdate (an error status would be a client failure, code 34) and records
    why; a host already mid-update keeps its grant so that it can retry its download."""
    busy = Host(machine_id=machine(110), version=OLD)
    await omaha(client, busy.check())
    await omaha(client, busy.event(13, 1))
    await sql(engine, "UPDATE groups SET updates_enabled = false WHERE id = :g", g=STABLE_AMD64)

    fresh = Host(machine_id=machine(111), version=OLD)
    check = check_of(await omaha(client, fresh.check()))
    assert check.get("status") == "noupdate"
    state = await state_of(engine, fresh.machine_id)
    assert state is not None and (state.status, state.hold_reason) == ("idle", "paused")

    check = check_of(await omaha(client, busy.check()))
    assert check.get("status") == "ok"
    state = await state_of(engine, busy.machine_id)
    assert state is not None and state.status == "downloading"  # a regrant is not a new grant


async def test_host_hold(client: Client, release: Release, engine: AsyncEngine) -> None:
    host = Host(machine_id=machine(120), version=OLD)
    await omaha(client, Host(machine_id=host.machine_id, version=NEW).check())
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE instance_apps SET held = true WHERE instance_id = :m"),
            {"m": host.machine_id},
        )
    assert check_of(await omaha(client, host.check())).get("status") == "noupdate"
    state = await state_of(engine, host.machine_id)
    assert state is not None and state.hold_reason == "host_hold"


# -- what is recorded about a host ----------------------------------------------------------------


async def test_instance_fields(
    client: Client, release: Release, engine: AsyncEngine, clock: FakeClock
) -> None:
    host = Host(machine_id=machine(130), version=OLD, alias="db-7", oem="azure")
    await omaha(client, host.check())
    checked_at = clock.now
    inst = await instance_of(engine, host.machine_id)
    assert inst is not None
    assert (inst.alias, inst.ip, inst.oem, inst.oem_version, inst.aleph_version, inst.board) == (
        "db-7",
        "127.0.0.1",
        "azure",
        "",
        "3510.2.1",
        "amd64-usr",
    )
    assert inst.created_at == clock.now and inst.last_seen_at == clock.now
    state = await state_of(engine, host.machine_id)
    assert state is not None
    assert state.boot_id == "0c288430-2504-4db4-913a-8c3de52afd07"
    assert state.last_check_at == clock.now
    assert state.track == "stable" and state.version == OLD

    # An event is not a check; a later check moves last_check_at; a stub (no board, no
    # alephversion) does not erase what the host reported before.
    clock.advance(minutes=3)
    await omaha(client, host.event(13, 1))
    state = await state_of(engine, host.machine_id)
    assert state is not None and state.last_check_at == checked_at
    inst = await instance_of(engine, host.machine_id)
    assert inst is not None and inst.last_seen_at == clock.now
    clock.advance(minutes=3)
    await omaha(client, _stub_request(host.machine_id, update_check=True))
    inst = await instance_of(engine, host.machine_id)
    assert inst is not None
    assert (inst.board, inst.aleph_version, inst.alias) == ("amd64-usr", "3510.2.1", "")
    state = await state_of(engine, host.machine_id)
    assert state is not None and state.last_check_at == clock.now


async def test_overlong_host_strings_are_not_a_server_error(
    client: Client, release: Release, engine: AsyncEngine
) -> None:
    """update.conf's MACHINE_ALIAS and GROUP are free text, and every attribute is the host's to
    fill: longer values than the columns hold must not be a 500 (PostgreSQL refuses them where
    SQLite stores anything)."""
    host = Host(
        machine_id=machine(140), version=OLD, alias="a" * 300, oem="o" * 100, board="b" * 100
    )
    doc = await omaha(client, host.check())
    assert check_of(doc).get("status") in ("ok", "noupdate")
    inst = await instance_of(engine, host.machine_id)
    assert inst is not None and inst.alias is not None and inst.alias.startswith("aaa")


@pytest.mark.parametrize(
    ("field", "value", "status", "message"),
    [
        # Keys and what decisions rest on cannot be clipped: that app is refused (below).
        ("machine_id", "f" * 65, 200, "error-invalidRequest"),
        ("version", "4152.2.3+" + "x" * 60, 200, "error-invalidRequest"),
        # Only recorded: kept, clipped to the column.
        ("boot_id", "{" + "b" * 200 + "}", 200, None),
        ("previous_version", "1." + "2" * 200, 200, None),
        # Never stored: no group has such a track.
        ("track", "t" * 200, 200, None),
    ],
)
async def test_overlong_identifiers(
    client: Client,
    release: Release,
    engine: AsyncEngine,
    field: str,
    value: str,
    status: int,
    message: str | None,
) -> None:
    """Without the checks, PostgreSQL refuses these values inside the transaction: a 500."""
    host = Host(machine_id=machine(141), version=OLD)
    previous = ""
    if field == "previous_version":
        previous = value
    else:
        setattr(host, field, value)
    resp = await client.post("/v1/update/", data=host.check(previous_version=previous))
    assert resp.status == status, await resp.text()
    if message is not None:
        app = etree.fromstring(await resp.read()).find("app")
        assert app is not None and app.get("status") == message
        assert app.find("updatecheck") is None
        assert await count(engine, "instances") == 0
        return
    if field == "track":
        assert check_of(etree.fromstring(await resp.read())).get("status") == "error-unknownTrack"
        return
    state = await state_of(engine, host.machine_id)
    assert state is not None and state.boot_id is not None
    if field == "boot_id":
        assert state.boot_id == ("b" * 200)[:64]
    else:
        (event,) = await events_of(engine, host.machine_id)  # 3/2 naming a version: logged
        assert event.previous_version == value[:64]


# -- refusals -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "empty"),
        (b"not xml at all", "not well-formed XML"),
        (b"<request protocol='3.0'><app appid='x'>", "not well-formed XML"),
        (b"<response protocol='3.0'/>", "expected <request>"),
        (b"<request protocol='2.0'><app appid='x'/></request>", "protocol"),
        (b"<request protocol='3.0'></request>", "no <app>"),
        (b"<request protocol='3.0'><app/></request>", "appid"),
        (
            b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaa">]>'
            b"<request protocol='3.0'><app appid='x'/></request>",
            "DTD",
        ),
    ],
)
async def test_malformed_request_is_400(client: Client, body: bytes, message: str) -> None:
    resp = await client.post("/v1/update/", data=body, headers={"Content-Type": "text/xml"})
    assert resp.status == 400
    answer = await resp.text()
    assert message in answer
    assert "Traceback" not in answer


async def test_body_over_64_kib_is_413(client: Client, engine: AsyncEngine) -> None:
    host = Host(machine_id=machine(150), version=OLD)
    body = host.check()
    padded = body.replace(b"<updatecheck>", b"<updatecheck>" + b" " * (MAX_BODY + 1 - len(body)))
    assert len(padded) == MAX_BODY + 1
    resp = await client.post("/v1/update/", data=padded)
    assert resp.status == 413
    assert str(MAX_BODY) in await resp.text()

    # The same without a Content-Length (chunked): the limit holds while reading.
    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(padded), 4096):
            yield padded[i : i + 4096]

    resp = await client.post("/v1/update/", data=chunks())
    assert resp.status == 413
    # A body of exactly the limit is read and answered.
    exact = body.replace(b"<updatecheck>", b"<updatecheck>" + b" " * (MAX_BODY - len(body)))
    assert len(exact) == MAX_BODY
    assert (await client.post("/v1/update/", data=exact)).status == 200
    assert await count(engine, "instances") == 1  # only the one that was read


async def test_bad_event_later_in_the_request_records_nothing(
    client: Client, release: Release, engine: AsyncEngine
) -> None:
    """A good app followed by one with a malformed event: 400, and the good app's host, state
    and event are not half written."""
    good = Host(machine_id=machine(160), version=OLD).check().decode()
    bad_app = (
        f'    <app appid="{{{FLATCAR_APP_ID}}}" version="{OLD}" machineid="{machine(161)}">\n'
        '        <event eventtype="3" eventresult="zero"></event>\n    </app>\n'
    )
    body = good.replace("</request>", bad_app + "</request>").encode()
    resp = await client.post("/v1/update/", data=body)
    assert resp.status == 400
    assert "eventresult" in await resp.text()
    for table in ("instances", "instance_apps", "events"):
        assert await count(engine, table) == 0, table


class _FailOnSecondEvent(Metrics):
    """Fails while the second app's event is applied, after the first app's writes."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = 0

    def count_event(
        self, event_type: int, result: int, error_code: int | None, group: str, arch: str
    ) -> None:
        self.seen += 1
        if self.seen == 2:
            raise RuntimeError("injected failure in the middle of a request")
        super().count_event(event_type, result, error_code, group, arch)


async def test_one_transaction_per_request(
    client: Client, release: Release, engine: AsyncEngine, clock: FakeClock
) -> None:
    """A failure in the second app of a request rolls back the first app's writes too: a service
    that committed per app (or per statement) would leave the first host granted."""
    # `client` (with `release`) has set the package up in this database.
    sessions = session_factory(engine)
    service = OmahaService(
        sessions, CatalogCache(sessions, "http://nebula.test", 0.0), _FailOnSecondEvent()
    )
    first = Host(machine_id=machine(170), version=OLD).check().decode()
    second_app = (
        f'    <app appid="{{{FLATCAR_APP_ID}}}" version="{OLD}" track="stable" '
        f'board="amd64-usr" machineid="{machine(171)}">\n'
        '        <event eventtype="13" eventresult="1"></event>\n    </app>\n'
    )
    request = parse_request(first.replace("</request>", second_app + "</request>").encode())
    with pytest.raises(RuntimeError, match="injected"):
        await service.handle(request, "127.0.0.1", clock.now)
    for table in ("instances", "instance_apps", "events"):
        assert await count(engine, table) == 0, table
