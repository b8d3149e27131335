"""sysext hosting over HTTP, on both databases: the admin API (upload, list, promote, demote,
delete, tokens) and what hosts fetch (the per-group SHA256SUMS index and the images)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from nebula.config import Settings

K1_X86 = b"kubernetes 1.31.1 for x86-64 " * 100
K1_ARM = b"kubernetes 1.31.1 for arm64 " * 100
K2_X86 = b"kubernetes 1.32.2 for x86-64 " * 100
F1_X86, F1_ARM, F2_X86 = (
    "kubernetes-v1.31.1-x86-64.raw",
    "kubernetes-v1.31.1-arm64.raw",
    "kubernetes-v1.32.2-x86-64.raw",
)
IMAGES = "/api/v1/sysext/images"
PROMOTIONS = "/api/v1/sysext/promotions"


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def stored(settings: Settings, sub: str) -> list[Path]:
    return [p for p in (Path(settings.payload_dir) / sub).rglob("*") if p.is_file()]


async def upload(client: Any, token: str, name: str, data: bytes, status: int = 201) -> Any:
    resp = await client.post(IMAGES, params={"file": name}, data=data, headers=auth(token))
    body = await resp.json()
    assert resp.status == status, body
    return body


async def promotion(
    client: Any, token: str, method: str, version: str, group: str, status: int = 200, **extra: str
) -> Any:
    body = {"name": "kubernetes", "version": version, "group": group, **extra}
    resp = await client.request(method, PROMOTIONS, json=body, headers=auth(token))
    answer = await resp.json()
    assert resp.status == status, answer
    return answer


async def index(client: Any, group: str) -> tuple[int, str]:
    resp = await client.get(f"/v1/extensions/{group}/kubernetes/SHA256SUMS")
    return resp.status, await resp.text()


async def three_images(client: Any, token: str) -> None:
    for name, data in ((F1_X86, K1_X86), (F1_ARM, K1_ARM), (F2_X86, K2_X86)):
        await upload(client, token, name, data)


async def test_upload_stores_content_addressed(
    client: Any, admin_token: str, settings: Settings
) -> None:
    body = await upload(client, admin_token, F1_X86, K1_X86)
    assert (body["name"], body["version"], body["arch"]) == ("kubernetes", "v1.31.1", "x86-64")
    assert (body["sha256"], body["size"], body["groups"]) == (sha(K1_X86), len(K1_X86), [])
    blob = Path(settings.payload_dir) / "objects" / sha(K1_X86)[:2] / sha(K1_X86)
    assert blob.read_bytes() == K1_X86
    assert stored(settings, "incoming") == []
    # The same name again is refused (an image never changes under hosts that have it).
    again = await upload(client, admin_token, F1_X86, b"other bytes", status=409)
    assert "already stored" in again["error"]
    assert stored(settings, "objects") == [blob]


async def test_index_lists_exactly_the_promoted_versions_per_group(
    client: Any, admin_token: str
) -> None:
    await three_images(client, admin_token)
    assert (await index(client, "stable"))[0] == 404  # nothing promoted yet
    # Without --arch a version is promoted on every arch it is stored for.
    answer = await promotion(client, admin_token, "POST", "v1.31.1", "stable")
    assert answer["images"] == [F1_ARM, F1_X86]
    assert answer["index"].endswith("/v1/extensions/stable/kubernetes/SHA256SUMS")
    await promotion(client, admin_token, "POST", "v1.32.2", "beta")
    status, text = await index(client, "stable")
    assert status == 200
    assert text == f"{sha(K1_ARM)}  {F1_ARM}\n{sha(K1_X86)}  {F1_X86}\n"
    assert (await index(client, "beta")) == (200, f"{sha(K2_X86)}  {F2_X86}\n")
    assert (await index(client, "alpha"))[0] == 404
    # Promoting again changes nothing; then v1.32.2 joins stable too.
    await promotion(client, admin_token, "POST", "v1.31.1", "stable")
    await promotion(client, admin_token, "POST", "v1.32.2", "stable")
    _, text = await index(client, "stable")
    assert text.splitlines() == [
        f"{sha(K1_ARM)}  {F1_ARM}",
        f"{sha(K1_X86)}  {F1_X86}",
        f"{sha(K2_X86)}  {F2_X86}",
    ]
    # Demoting takes a version (here one arch of it) out of that group's index only.
    assert (await promotion(client, admin_token, "DELETE", "v1.31.1", "stable", arch="arm64"))[
        "removed"
    ] == 1
    _, text = await index(client, "stable")
    assert text == f"{sha(K1_X86)}  {F1_X86}\n{sha(K2_X86)}  {F2_X86}\n"
    assert (await index(client, "beta")) == (200, f"{sha(K2_X86)}  {F2_X86}\n")
    await promotion(client, admin_token, "DELETE", "v1.31.1", "stable")
    await promotion(client, admin_token, "DELETE", "v1.32.2", "stable")
    assert (await index(client, "stable"))[0] == 404
    # Demoting what is not promoted says so.
    await promotion(client, admin_token, "DELETE", "v1.32.2", "stable", status=404)


async def test_promotion_errors(client: Any, admin_token: str) -> None:
    await upload(client, admin_token, F1_X86, K1_X86)
    answer = await promotion(client, admin_token, "POST", "v9", "stable", status=404)
    assert "no sysext image kubernetes v9" in answer["error"]
    answer = await promotion(client, admin_token, "POST", "v1.31.1", "nosuch", status=404)
    assert "no group 'nosuch'" in answer["error"]
    # Only arm64 asked, and only x86-64 stored.
    await promotion(client, admin_token, "POST", "v1.31.1", "stable", status=404, arch="arm64")
    await promotion(client, admin_token, "POST", "v1.31.1", "stable", status=400, arch="amd64")


async def test_images_served_only_to_groups_they_are_promoted_to(
    client: Any, admin_token: str
) -> None:
    await three_images(client, admin_token)
    await promotion(client, admin_token, "POST", "v1.31.1", "stable")
    base = "/v1/extensions/stable/kubernetes"
    resp = await client.get(f"{base}/{F1_X86}")
    assert resp.status == 200 and await resp.read() == K1_X86
    assert resp.headers["ETag"] == f'"{sha(K1_X86)}"'
    resp = await client.get(f"{base}/{F1_X86}", headers={"Range": "bytes=10-19"})
    assert resp.status == 206 and await resp.read() == K1_X86[10:20]
    assert resp.headers["Content-Range"] == f"bytes 10-19/{len(K1_X86)}"
    resp = await client.head(f"{base}/{F1_ARM}")
    assert resp.status == 200 and int(resp.headers["Content-Length"]) == len(K1_ARM)
    resp = await client.get(f"{base}/{F1_X86}", headers={"If-None-Match": f'"{sha(K1_X86)}"'})
    assert resp.status == 304
    resp = await client.head(f"{base}/SHA256SUMS")
    assert resp.status == 200
    # Stored but not promoted to stable, or promoted elsewhere only: 404.
    assert (await client.get(f"{base}/{F2_X86}")).status == 404
    assert (await client.get(f"/v1/extensions/beta/kubernetes/{F1_X86}")).status == 404
    # A stored image under another extension's directory is not served either.
    assert (await client.get(f"/v1/extensions/stable/docker/{F1_X86}")).status == 404


@pytest.mark.parametrize(
    "path",
    [
        "/v1/extensions/stable/kubernetes/..%2F..%2Fetc%2Fpasswd",
        "/v1/extensions/stable/kubernetes/%00",
        "/v1/extensions/stable/kubernetes/kubernetes-v1.31.1-x86-64.raw%00",
        "/v1/extensions/stable/..%2Fkubernetes/SHA256SUMS",
        "/v1/extensions/st%00able/kubernetes/SHA256SUMS",
        "/v1/extensions/stable/KUBERNETES/SHA256SUMS",
        "/v1/extensions/stable/kubernetes/SHA256SUMS.gpg",
        "/v1/extensions/stable/kubernetes/" + "x" * 5000,
        "/v1/extensions/" + "s" * 300 + "/kubernetes/SHA256SUMS",
        "/v1/extensions/stable/kubernetes/kubernetes-v1.31.1-x86-64.raw/extra",
        "/v1/extensions/stable/kubernetes",
    ],
)
async def test_path_tricks_are_404(client: Any, admin_token: str, path: str) -> None:
    await upload(client, admin_token, F1_X86, K1_X86)
    await promotion(client, admin_token, "POST", "v1.31.1", "stable")
    resp = await client.get(path)
    assert resp.status == 404, await resp.text()


@pytest.mark.parametrize(
    "name",
    [
        "kubernetes-v1.31.1-amd64.raw",
        "kubernetes-v1.31.1.raw",
        "kubernetes-v1.31.1-x86-64.img",
        "../kubernetes-v1.31.1-x86-64.raw",
        "",
    ],
)
async def test_bad_file_names_refused_and_nothing_stored(
    client: Any, admin_token: str, settings: Settings, name: str
) -> None:
    body = await upload(client, admin_token, name, K1_X86, status=400)
    assert "<ext>-<version>-<arch>.raw" in body["error"]
    assert stored(settings, "objects") == [] and stored(settings, "incoming") == []
    resp = await client.get(IMAGES, headers=auth(admin_token))
    assert (await resp.json())["images"] == []


async def test_empty_image_refused(client: Any, admin_token: str, settings: Settings) -> None:
    body = await upload(client, admin_token, F1_X86, b"", status=400)
    assert "empty" in body["error"]
    assert stored(settings, "objects") == [] and stored(settings, "incoming") == []


async def test_delete_refused_while_promoted(client: Any, admin_token: str) -> None:
    await three_images(client, admin_token)
    await promotion(client, admin_token, "POST", "v1.31.1", "beta", arch="x86-64")
    path = f"{IMAGES}/kubernetes/v1.31.1"
    resp = await client.delete(path, headers=auth(admin_token))
    assert resp.status == 409
    assert "promoted to beta" in (await resp.json())["error"]
    # The arch that is not promoted can go; the promoted one stays and is still served.
    resp = await client.delete(path, params={"arch": "arm64"}, headers=auth(admin_token))
    assert resp.status == 200
    assert [i["file"] for i in (await resp.json())["deleted"]] == [F1_ARM]
    assert (await index(client, "beta")) == (200, f"{sha(K1_X86)}  {F1_X86}\n")
    await promotion(client, admin_token, "DELETE", "v1.31.1", "beta")
    resp = await client.delete(path, headers=auth(admin_token))
    assert resp.status == 200
    resp = await client.get(IMAGES, headers=auth(admin_token))
    assert [i["file"] for i in (await resp.json())["images"]] == [F2_X86]
    resp = await client.delete(path, headers=auth(admin_token))
    assert resp.status == 404


async def test_list_shows_groups(client: Any, admin_token: str, viewer_token: str) -> None:
    await three_images(client, admin_token)
    await promotion(client, admin_token, "POST", "v1.31.1", "stable")
    await promotion(client, admin_token, "POST", "v1.31.1", "beta", arch="x86-64")
    resp = await client.get(IMAGES, params={"name": "kubernetes"}, headers=auth(viewer_token))
    assert resp.status == 200
    groups = {i["file"]: i["groups"] for i in (await resp.json())["images"]}
    assert groups == {F1_ARM: ["stable"], F1_X86: ["beta", "stable"], F2_X86: []}


async def test_tokens(client: Any, admin_token: str, viewer_token: str) -> None:
    await upload(client, admin_token, F1_X86, K1_X86)
    writes = [
        ("POST", IMAGES, {"params": {"file": F1_ARM}, "data": K1_ARM}),
        (
            "POST",
            PROMOTIONS,
            {"json": {"name": "kubernetes", "version": "v1.31.1", "group": "stable"}},
        ),
        (
            "DELETE",
            PROMOTIONS,
            {"json": {"name": "kubernetes", "version": "v1.31.1", "group": "stable"}},
        ),
        ("DELETE", f"{IMAGES}/kubernetes/v1.31.1", {}),
    ]
    for method, path, kwargs in writes:
        resp = await client.request(method, path, headers=auth(viewer_token), **kwargs)
        assert resp.status == 403, (method, path)
        resp = await client.request(method, path, **kwargs)
        assert resp.status == 401, (method, path)
    assert (await client.get(IMAGES)).status == 401
    assert (await client.get(IMAGES, headers=auth(viewer_token))).status == 200
    # Nothing changed.
    resp = await client.get(IMAGES, headers=auth(admin_token))
    assert [(i["file"], i["groups"]) for i in (await resp.json())["images"]] == [(F1_X86, [])]


async def test_image_downloads_are_counted_as_payloads(client: Any, admin_token: str) -> None:
    """sysext images are payload bytes hosts download: counted in nebula_payload_requests_total
    by status and in nebula_payload_bytes_sent_total as they go out, the index as a request.
    Catches downloads that no metric shows (a fleet pulling a new image would be invisible)."""
    await three_images(client, admin_token)
    await promotion(client, admin_token, "POST", "v1.31.1", "stable")
    base = "/v1/extensions/stable/kubernetes"
    assert (await index(client, "stable"))[0] == 200
    assert await (await client.get(f"{base}/{F1_X86}")).read() == K1_X86
    resp = await client.get(f"{base}/{F1_ARM}", headers={"Range": "bytes=0-9"})
    assert resp.status == 206 and len(await resp.read()) == 10
    assert (await client.get(f"{base}/{F2_X86}")).status == 404  # not promoted to stable
    text = await (await client.get("/metrics")).text()
    values = dict(line.rpartition(" ")[::2] for line in text.splitlines() if line[:1] != "#")
    requests = "nebula_payload_requests_total"
    assert float(values[f'{requests}{{status="200"}}']) == 2  # the index and an image
    assert float(values[f'{requests}{{status="206"}}']) == 1
    assert float(values[f'{requests}{{status="404"}}']) == 1
    assert float(values["nebula_payload_bytes_sent_total"]) == len(K1_X86) + 10
