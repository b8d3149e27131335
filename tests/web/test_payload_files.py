"""Payload downloads (GET/HEAD /v1/payloads/{package_id}/{name}): exact bytes, byte ranges as
update_engine uses them to resume, 404s, and no token.
"""

from __future__ import annotations

import base64
import hashlib
import os
import uuid
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from lxml import etree
from yarl import URL

from nebula.config import Settings
from nebula.store.blobs import BlobStore
from tests import crau
from tests.factories import Host
from tests.statements import statements

NEW = "4152.2.3"
MAIN, AZURE = "flatcar_production_update.gz", "oem-azure.gz"
SIZE = 40_000  # data bytes of the main payload; the file is a little larger


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def payload(key: RSAPrivateKey, size: int, tag: bytes) -> bytes:
    # Bytes that differ at every offset, so that a wrong range cannot match by accident.
    data = b"".join(hashlib.sha256(tag + i.to_bytes(4, "big")).digest() for i in range(size // 32))
    return crau.build_payload(key, data=data)


class Uploaded:
    def __init__(self, package: dict[str, Any], main: bytes, ext: bytes) -> None:
        self.package = package
        self.main = main
        self.ext = ext
        # The codebase is under public_url (http://nebula.test); the test client needs the path.
        self.base = URL(package["codebase"]).path
        assert self.base.endswith("/")

    def path(self, name: str) -> str:
        return self.base + name


def attr(doc: etree._Element, path: str, name: str) -> str:
    """The attribute `name` of the first element at `path`; fails the test if either is absent."""
    element = doc.find(path)
    assert element is not None, path
    value = element.get(name)
    assert value is not None, (path, name)
    return value


async def upload(
    client: Any, token: str, key: RSAPrivateKey, version: str, tag: bytes, size: int
) -> Uploaded:
    """Upload a package of `version` (a main payload of `size` data bytes, an extension)."""
    main, ext = payload(key, size, tag), payload(key, 4096, tag + b"-ext")
    form = aiohttp.FormData()
    form.add_field("payload", main, filename=MAIN)
    form.add_field("extension", ext, filename=AZURE)
    resp = await client.post(
        "/api/v1/packages/upload",
        params={"version": version, "arch": "amd64"},
        data=form,
        headers=auth(token),
    )
    assert resp.status == 201, await resp.text()
    return Uploaded(await resp.json(), main, ext)


@pytest.fixture
async def uploaded(client: Any, admin_token: str, signing_key: RSAPrivateKey) -> Uploaded:
    return await upload(client, admin_token, signing_key, NEW, b"main", SIZE)


async def test_get_and_head(client: Any, uploaded: Uploaded) -> None:
    for name, data in ((MAIN, uploaded.main), (AZURE, uploaded.ext)):
        resp = await client.get(uploaded.path(name))  # no token: hosts have none
        assert resp.status == 200, await resp.text()
        assert await resp.read() == data
        assert resp.headers["Content-Length"] == str(len(data))
        assert resp.content_type == "application/octet-stream"
        assert resp.headers.get("ETag")
        assert resp.headers.get("Accept-Ranges") == "bytes"
    # Each file has its own ETag.
    etags = {(await client.get(uploaded.path(n))).headers["ETag"] for n in (MAIN, AZURE)}
    assert len(etags) == 2

    # A token is neither needed nor checked: a wrong one changes nothing.
    resp = await client.get(uploaded.path(AZURE), headers={"Authorization": "Bearer wrong"})
    assert resp.status == 200
    assert await resp.read() == uploaded.ext

    # HEAD: the same headers, no body.
    get = await client.get(uploaded.path(MAIN))
    await get.read()
    resp = await client.head(uploaded.path(MAIN))
    assert resp.status == 200
    assert resp.headers["Content-Length"] == str(len(uploaded.main))
    assert resp.headers["ETag"] == get.headers["ETag"]
    assert resp.content_type == "application/octet-stream"
    assert await resp.read() == b""


async def test_byte_ranges(client: Any, uploaded: Uploaded) -> None:
    data, size = uploaded.main, len(uploaded.main)
    url = uploaded.path(MAIN)

    resp = await client.get(url, headers={"Range": "bytes=0-99"})
    assert resp.status == 206
    assert await resp.read() == data[:100]
    assert resp.headers["Content-Range"] == f"bytes 0-99/{size}"
    assert resp.headers["Content-Length"] == "100"

    for start in (1, 12_345, size - 1):
        resp = await client.get(url, headers={"Range": f"bytes={start}-"})
        assert resp.status == 206, start
        assert await resp.read() == data[start:], start
        assert resp.headers["Content-Range"] == f"bytes {start}-{size - 1}/{size}", start
        assert resp.headers["Content-Length"] == str(size - start), start

    resp = await client.get(url, headers={"Range": "bytes=1000-1999"})
    assert resp.status == 206
    assert await resp.read() == data[1000:2000]
    assert resp.headers["Content-Range"] == f"bytes 1000-1999/{size}"

    # An end past the file is cut to the file.
    resp = await client.get(url, headers={"Range": f"bytes={size - 10}-{size + 500}"})
    assert resp.status == 206
    assert await resp.read() == data[-10:]
    assert resp.headers["Content-Range"] == f"bytes {size - 10}-{size - 1}/{size}"

    # Suffix range: the last N bytes.
    resp = await client.get(url, headers={"Range": "bytes=-50"})
    assert resp.status == 206
    assert await resp.read() == data[-50:]

    # A range that starts past the end: 416, and the size, so the client can start over.
    for header in (f"bytes={size}-", f"bytes={size + 100}-", f"bytes={size + 1}-{size + 9}"):
        resp = await client.get(uploaded.path(MAIN), headers={"Range": header})
        assert resp.status == 416, header
        assert resp.headers["Content-Range"] == f"bytes */{size}", header
        assert uploaded.main[:100] not in await resp.read()


async def test_resumed_download_matches_the_advertised_hash(
    client: Any, admin_token: str, uploaded: Uploaded
) -> None:
    """As update_engine does it: the offer, a download cut short, then `Range: bytes=N-`."""
    resp = await client.put(
        "/api/v1/channels/stable", json={"arch": "amd64", "version": NEW}, headers=auth(admin_token)
    )
    assert resp.status == 200, await resp.text()
    host = Host(machine_id="0123456789abcdef0123456789abcdef", version="3815.2.0")
    resp = await client.post("/v1/update/", data=host.check(), headers={"Content-Type": "text/xml"})
    assert resp.status == 200
    doc = etree.fromstring(await resp.read())
    assert attr(doc, "app/updatecheck", "status") == "ok"
    codebase = attr(doc, "app/updatecheck/urls/url", "codebase")
    package = "app/updatecheck/manifest/packages/package"
    size = int(attr(doc, package, "size"))
    url = URL(codebase + attr(doc, package, "name")).path

    cut = size // 2 + 7
    first = await (await client.get(url, headers={"Range": f"bytes=0-{cut - 1}"})).read()
    assert len(first) == cut
    resp = await client.get(url, headers={"Range": f"bytes={cut}-"})
    assert resp.status == 206
    got = first + await resp.read()

    assert got == uploaded.main
    assert len(got) == size
    action = "app/updatecheck/manifest/actions/action"
    assert base64.b64encode(hashlib.sha256(got).digest()).decode() == attr(doc, action, "sha256")
    assert hashlib.sha256(got).hexdigest() == attr(doc, package, "hash_sha256")
    assert base64.b64encode(hashlib.sha1(got).digest()).decode() == attr(doc, package, "hash")


async def test_unknown_or_foreign_files_are_404(
    client: Any, admin_token: str, uploaded: Uploaded
) -> None:
    other_id = str(uuid.uuid4())
    for path in (
        f"/v1/payloads/{other_id}/{MAIN}",  # no such package
        f"/v1/payloads/not-a-uuid/{MAIN}",
        uploaded.path("flatcar-zfs.gz"),  # no such file in the package
        uploaded.path(MAIN + ".sig"),
    ):
        for method in ("GET", "HEAD"):
            resp = await client.request(method, path)
            assert resp.status == 404, (method, path)

    # A package whose files live elsewhere is never served here, even when the payload store
    # happens to hold a file with the same hash.
    main_file = uploaded.package["files"][0]
    resp = await client.post(
        "/api/v1/packages",
        json={
            "version": "4152.2.4",
            "arch": "amd64",
            "base_url": "https://cdn.example/x/",
            "files": [{k: main_file[k] for k in ("name", "size", "sha1", "sha256")}],
        },
        headers=auth(admin_token),
    )
    assert resp.status == 201, await resp.text()
    external = await resp.json()
    resp = await client.get(f"/v1/payloads/{external['id']}/{MAIN}")
    assert resp.status == 404

    # A deleted package's files are gone from this URL (though the bytes may stay stored).
    resp = await client.delete(
        f"/api/v1/packages/{uploaded.package['id']}", headers=auth(admin_token)
    )
    assert resp.status == 204
    assert (await client.get(uploaded.path(MAIN))).status == 404


def _metric(text: str, name: str, labels: str = "") -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    wanted = f"{name}{{{labels}}}" if labels else name
    for line in text.splitlines():
        key, _, value = line.rpartition(" ")
        if key == wanted:
            return float(value)
    return 0.0


async def test_downloads_are_counted_once(client: Any, uploaded: Uploaded) -> None:
    size = len(uploaded.main)
    assert (await client.get(uploaded.path(MAIN))).status == 200
    resp = await client.get(uploaded.path(MAIN), headers={"Range": "bytes=100-"})
    assert resp.status == 206
    await resp.read()
    assert (await client.get(uploaded.path("nosuch.gz"))).status == 404
    assert (await client.get(f"/v1/payloads/{uuid.uuid4()}/{MAIN}")).status == 404
    assert (await client.get(f"/v1/payloads/not-a-uuid/{MAIN}")).status == 404

    text = await (await client.get("/metrics")).text()
    requests = "nebula_payload_requests_total"
    assert _metric(text, requests, 'status="200"') == 1
    assert _metric(text, requests, 'status="206"') == 1
    assert _metric(text, requests, 'status="404"') == 3
    assert _metric(text, "nebula_payload_bytes_sent_total") == size + (size - 100)


async def test_etag_is_the_content_sha256(
    client: Any, uploaded: Uploaded, settings: Settings
) -> None:
    """Catches aiohttp's mtime-and-size ETag: the same bytes get another mtime on another
    replica (or after a restore), and a download resumed there must see the same tag."""
    url = uploaded.path(MAIN)
    sha = hashlib.sha256(uploaded.main).hexdigest()
    first = await client.get(url)
    await first.read()
    assert first.headers["ETag"] == f'"{sha}"'
    assert "Last-Modified" not in first.headers  # a date differs between replicas too

    # The stored file "re-written" with another mtime, as another replica's copy would be.
    os.utime(BlobStore(settings.payload_dir).path(sha), (1_000_000_000, 1_000_000_000))
    for method in ("GET", "HEAD"):
        again = await client.request(method, url)
        await again.read()
        assert again.headers["ETag"] == first.headers["ETag"], method
    ranged = await client.get(url, headers={"Range": "bytes=10-"})
    assert ranged.status == 206
    assert ranged.headers["ETag"] == first.headers["ETag"]


async def test_conditional_requests_use_the_sha256_etag(client: Any, uploaded: Uploaded) -> None:
    """Catches conditionals still decided by the file's mtime (FileResponse's own logic) once
    the ETag is the content's hash: If-Range with our tag must resume, anything else must send
    the whole file (never a range of bytes the client cannot prove it holds)."""
    url, data = uploaded.path(MAIN), uploaded.main
    etag = f'"{hashlib.sha256(data).hexdigest()}"'

    resp = await client.get(url, headers={"Range": "bytes=100-", "If-Range": etag})
    assert resp.status == 206
    assert await resp.read() == data[100:]
    for other in (
        '"0123abcd-9c40"',  # an mtime-and-size tag from before, or another server's
        f"W/{etag}",  # If-Range compares strongly: a weak tag never matches
        "Fri, 01 Jan 2100 00:00:00 GMT",  # a date proves nothing across replicas
    ):
        resp = await client.get(url, headers={"Range": "bytes=100-", "If-Range": other})
        assert resp.status == 200, other
        assert await resp.read() == data, other

    # If-None-Match: 304 for our tag (weakly compared) or *, the file for any other.
    for tag in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        for method in ("GET", "HEAD"):
            resp = await client.request(method, url, headers={"If-None-Match": tag})
            assert resp.status == 304, (tag, method)
            assert resp.headers["ETag"] == etag
            assert await resp.read() == b""
    resp = await client.get(url, headers={"If-None-Match": '"other"'})
    assert resp.status == 200
    assert await resp.read() == data

    # If-Match: the file for our tag, 412 for another (or a weak one).
    resp = await client.get(url, headers={"If-Match": etag, "Range": "bytes=5-"})
    assert resp.status == 206
    assert await resp.read() == data[5:]
    for tag in ('"other"', f"W/{etag}"):
        resp = await client.get(url, headers={"If-Match": tag})
        assert resp.status == 412, tag


async def test_a_known_file_is_served_without_a_query(
    aiohttp_client: Any,
    db_url: str,
    tmp_path: Any,
    key_file: Any,
    admin_token: str,
    signing_key: RSAPrivateKey,
) -> None:
    """Two replicas on one database and payload store. Catches a payload route that queries the
    package files for every download, and a file map that is the only source: a file uploaded on
    the other replica (this one's catalog is up to cache_ttl old) must still be served."""
    from nebula.store import db
    from nebula.web.app import create_app
    from tests.factories import make_settings

    engine = db.create_engine(db_url)
    settings = make_settings(db_url, tmp_path, key_file, cache_ttl=600.0)
    here = await aiohttp_client(create_app(settings, engine=engine))
    there = await aiohttp_client(create_app(settings))

    def file_queries() -> Any:
        return statements(engine, lambda statement: "package_files" in statement)

    try:
        first = await upload(here, admin_token, signing_key, NEW, b"first", 4096)
        await here.post("/v1/update/", data=Host(machine_id="e" * 32).check())  # catalog loaded
        with file_queries() as seen:
            for _ in range(3):
                resp = await here.get(first.path(MAIN), headers={"Range": "bytes=10-"})
                assert resp.status == 206 and await resp.read() == first.main[10:]
        assert seen == []

        # Uploaded on the other replica: not in this one's catalog yet, found in the database.
        second = await upload(there, admin_token, signing_key, "4152.2.4", b"second", 4096)
        with file_queries() as seen:
            resp = await here.get(second.path(AZURE))
            assert resp.status == 200 and await resp.read() == second.ext
        assert len(seen) == 1

        # Deleted: gone at once where it was deleted (that catalog is dropped, and the database
        # no longer has it); other replicas follow within their cache_ttl, as their Omaha
        # answers do.
        resp = await there.delete(
            f"/api/v1/packages/{first.package['id']}", headers=auth(admin_token)
        )
        assert resp.status == 204, await resp.text()
        assert (await there.get(first.path(MAIN))).status == 404
    finally:
        await engine.dispose()


# -- absurd ranges and path tricks (issue 8): a clear answer, never a 500 ------------------------

_BIG = 10**30
# (name, Range header, status). aiohttp serves one range; several (or a bytes range it cannot
# read) are refused 416 with the size rather than answered multipart. A suffix or end past the
# file is clamped to it (RFC 9110 14.1.2); a range in another unit is ignored (200).
ABSURD_RANGES: list[tuple[str, str, int]] = [
    ("two ranges", "bytes=0-1,5-9", 416),
    ("a thousand ranges", "bytes=" + ",".join(f"{i}-{i}" for i in range(1000)), 416),
    ("overlapping ranges", "bytes=0-100,50-150", 416),
    ("huge start", f"bytes={_BIG}-", 416),
    ("huge end", f"bytes=0-{_BIG}", 206),
    ("huge suffix", f"bytes=-{_BIG}", 206),
    ("suffix bigger than the file", "bytes=-100000000", 206),
    ("suffix of zero", "bytes=-0", 206),
    ("negative start", "bytes=-5-10", 416),
    ("end before start", "bytes=100-10", 416),
    ("no numbers", "bytes=-", 416),
    ("letters", "bytes=a-b", 416),
    ("other unit", "items=0-10", 200),  # an unknown unit is ignored (RFC 9110 14.2)
    ("no unit", "0-10", 200),
    ("empty", "", 200),
    ("spaces", "bytes = 0 - 10", 416),
    ("unicode digits", "bytes=\u0661-\u0662", 416),
    ("float", "bytes=1.5-2", 416),
    ("long header", "bytes=" + "0" * 8000 + "-1", 416),
]


@pytest.mark.parametrize(
    ("header", "status"), [r[1:] for r in ABSURD_RANGES], ids=[r[0] for r in ABSURD_RANGES]
)
async def test_absurd_ranges_get_a_clear_answer(
    client: Any, uploaded: Uploaded, header: str, status: int
) -> None:
    """Never a 500 or a hang; a 206 carries exactly the bytes its Content-Range names (catches
    a clamp gone wrong), a 200 the whole file, a 416 the size and no bytes of the file. The
    route serves on after."""
    resp = await client.get(uploaded.path(MAIN), headers={"Range": header})
    body = await resp.read()
    size = len(uploaded.main)
    assert resp.status == status
    if status == 206:
        first, last = map(int, resp.headers["Content-Range"][6:].split("/")[0].split("-"))
        assert resp.headers["Content-Range"].endswith(f"/{size}")
        assert body == uploaded.main[first : last + 1]
    elif status == 200:
        assert body == uploaded.main
    else:
        assert resp.headers["Content-Range"] == f"bytes */{size}"
        assert uploaded.main[:64] not in body
    assert (await client.get(uploaded.path(MAIN), headers={"Range": "bytes=0-9"})).status == 206


PATH_TRICKS = [
    "{base}../../../etc/passwd",
    "{base}..%2F..%2F..%2Fetc%2Fpasswd",
    "{base}%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "{base}..%5C..%5Cetc%5Cpasswd",
    "{base}%252e%252e%252fetc%252fpasswd",  # double-encoded
    "{base}flatcar_production_update.gz%2F..%2F..%2Fx",
    "{base}flatcar_production_update.gz/",
    "{base}flatcar_production_update.gz%00.txt",
    "{base}.",
    "{base}" + "a" * 4000,
    "/v1/payloads/..%2F..%2F..%2Fetc/passwd",
    "/v1/payloads/{id_upper}/flatcar_production_update.gz",
    "/v1/payloads//flatcar_production_update.gz",
    "/v1/payloads/{id}%2Fflatcar_production_update.gz",
]


@pytest.mark.parametrize("template", PATH_TRICKS)
async def test_path_tricks_name_nothing(client: Any, uploaded: Uploaded, template: str) -> None:
    """Catches a name joined onto a directory (or a case-folded id) reaching a file: each is a
    404 (or aiohttp's own 400 for what is no URL), never a 500 or the bytes of any file."""
    package_id = uploaded.package["id"]
    path = template.format(base=uploaded.base, id=package_id, id_upper=package_id.upper())
    resp = await client.get(URL(path, encoded=True))
    body = await resp.read()
    assert resp.status in (400, 404), (path, resp.status)
    assert b"root:" not in body and uploaded.main[:64] not in body
