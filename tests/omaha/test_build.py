"""Tests of nebula.omaha.build: golden responses byte for byte, every attribute update_engine and
ue-rs demand, escaping, and the refusal of responses a client would reject."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import re
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from nebula.omaha import (
    AppResponse,
    AppStatus,
    Manifest,
    PackageFile,
    Response,
    UpdateCheckResult,
    UpdateStatus,
    build_response,
    parse_request,
)
from nebula.omaha.build import build_response_cached

DATA = Path(__file__).parent.parent / "data" / "omaha"
FLATCAR_RAW = "{e96281a6-d1af-4bde-9a0a-97b76e56dc57}"


def _package(content: bytes, name: str, size: int, *, required: bool) -> PackageFile:
    return PackageFile(
        name=name,
        size=size,
        sha1_b64=base64.b64encode(hashlib.sha1(content).digest()).decode(),
        sha256_hex=hashlib.sha256(content).hexdigest(),
        required=required,
    )


def _sha256_b64(content: bytes) -> str:
    return base64.b64encode(hashlib.sha256(content).digest()).decode()


MAIN_CONTENT = b"flatcar_production_update.gz 4152.2.3"
MAIN = _package(MAIN_CONTENT, "flatcar_production_update.gz", 456734521, required=True)
OEM_AZURE = _package(b"oem-azure.gz 4152.2.3", "oem-azure.gz", 12893184, required=False)
DELTA_CONTENT = b"flatcar_production_update delta 3815.2.0 to 4152.2.3"
DELTA = _package(DELTA_CONTENT, "flatcar_production_update.gz", 31457280, required=True)

MANIFEST = Manifest(
    version="4152.2.3",
    # No trailing slash on purpose: build must add it.
    codebase="https://updates.example.com/v1/payloads/flatcar/amd64/4152.2.3",
    packages=(MAIN, OEM_AZURE),
    sha256_b64=_sha256_b64(MAIN_CONTENT),
    is_delta=False,
)
DELTA_MANIFEST = Manifest(
    version="4152.2.3",
    codebase="https://cdn.example.net/flatcar/amd64/delta/3815.2.0-4152.2.3/",
    packages=(DELTA,),
    sha256_b64=_sha256_b64(DELTA_CONTENT),
    is_delta=True,
)


def _app(
    update_check: UpdateCheckResult | None,
    *,
    ping: bool = True,
    events: int = 1,
    raw_app_id: str = FLATCAR_RAW,
    status: AppStatus = AppStatus.OK,
) -> AppResponse:
    return AppResponse(
        raw_app_id=raw_app_id,
        status=status,
        ping=ping,
        event_count=events,
        update_check=update_check,
    )


NO_UPDATE = UpdateCheckResult(UpdateStatus.NO_UPDATE)
OK = UpdateCheckResult(UpdateStatus.OK, MANIFEST)

GOLDEN_RESPONSES: list[tuple[str, Response]] = [
    ("update_ok.xml", Response(apps=(_app(OK),))),
    (
        "update_ok_delta.xml",
        Response(
            apps=(
                _app(
                    UpdateCheckResult(UpdateStatus.OK, DELTA_MANIFEST, poll_interval=2700),
                    raw_app_id=FLATCAR_RAW.upper(),
                ),
            ),
            daystart_elapsed_seconds=45296,
        ),
    ),
    ("noupdate.xml", Response(apps=(_app(NO_UPDATE),))),
    ("event_ack.xml", Response(apps=(_app(None, ping=False),))),
    (
        "unknown_app.xml",
        Response(
            apps=(
                _app(NO_UPDATE, raw_app_id=FLATCAR_RAW.upper()),
                _app(
                    None,
                    events=0,
                    raw_app_id="{6a1b2c3d-0000-4000-8000-00000000beef}",
                    status=AppStatus.UNKNOWN_APP,
                ),
            )
        ),
    ),
]
_GOLDEN_IDS = [name for name, _ in GOLDEN_RESPONSES]


@pytest.mark.parametrize(("name", "response"), GOLDEN_RESPONSES, ids=_GOLDEN_IDS)
def test_golden_response(name: str, response: Response) -> None:
    assert build_response(response) == (DATA / name).read_bytes()


def test_remembered_responses_are_keyed_on_all_of_the_response() -> None:
    """Catches a memo keyed on less than the whole answer: every golden response, then each
    with another daystart, must come out as build_response makes it, in any order."""
    variants = [r for _, r in GOLDEN_RESPONSES]
    variants += [dataclasses.replace(r, daystart_elapsed_seconds=7) for r in variants]
    for response in variants + variants[::-1]:
        assert build_response_cached(response) == build_response(response)
    # An equal but distinct object is served from the memo, and answers the same.
    first = variants[0]
    again = dataclasses.replace(first)
    assert again is not first
    assert build_response_cached(again) is build_response_cached(first)


def test_status_strings() -> None:
    # These are wire strings: a typo here is an invalid response for every host.
    assert {s.name: s.value for s in UpdateStatus} == {
        "OK": "ok",
        "NO_UPDATE": "noupdate",
        "INTERNAL": "error-internal",
        "OS_NOT_SUPPORTED": "error-osnotsupported",
        "HW_NOT_SUPPORTED": "error-hwnotsupported",
        "UNKNOWN_TRACK": "error-unknownTrack",
    }
    assert {s.name: s.value for s in AppStatus} == {
        "OK": "ok",
        "RESTRICTED": "restricted",
        "UNKNOWN_APP": "error-unknownApplication",
        "INVALID_APP_ID": "error-invalidAppId",
        "INTERNAL": "error-internal",
        "INVALID_REQUEST": "error-invalidRequest",
    }


# --- what the clients demand -------------------------------------------------------------------

_B64_RE = re.compile(r"[A-Za-z0-9+/]+={0,2}")
_ACTION_EVENTS = {"preinstall", "install", "postinstall", "update"}


def _b64(value: str | None, length: int) -> bytes:
    assert value is not None
    assert _B64_RE.fullmatch(value), value
    decoded = base64.b64decode(value, validate=True)
    assert len(decoded) == length
    # Canonical: re-encoding gives the same text (ue-rs refuses stray trailing bits).
    assert base64.b64encode(decoded).decode() == value
    return decoded


def _check_clients_accept(xml: bytes) -> etree._Element:
    """Every rule of contract §4, checked on a parsed response."""
    assert xml.startswith(b'<?xml version="1.0" encoding="UTF-8"?>')
    root = etree.fromstring(xml)
    for el in root.iter():
        assert isinstance(el.tag, str)
        assert not el.tag.startswith("{"), "no namespace anywhere"
        assert not el.nsmap
    assert root.tag == "response"
    assert root.get("protocol") == "3.0"
    apps = root.findall("app")
    assert apps, "at least one app"
    for app in apps:
        assert app.get("appid")
        assert app.get("status")
        assert [c.tag for c in app] == sorted(
            (c.tag for c in app), key=["ping", "updatecheck", "event"].index
        ), "children in the order ping, updatecheck, events"
        for child in app:
            if child.tag in ("ping", "event"):
                assert child.get("status") == "ok"
        check = app.find("updatecheck")
        if check is None:
            continue
        assert check.get("status") in {s.value for s in UpdateStatus}
        poll = check.get("PollInterval")
        assert poll is None or int(poll) > 0
        if check.get("status") != "ok":
            assert len(check) == 0
            continue
        urls = check.findall("urls/url")
        assert urls
        for url in urls:
            codebase = url.get("codebase")
            assert codebase
            assert codebase.endswith("/")
        manifest = check.find("manifest")
        assert manifest is not None
        assert manifest.get("version")
        packages = manifest.findall("packages/package")
        assert packages
        for i, package in enumerate(packages):
            assert package.get("name")
            assert int(package.get("size", "0")) > 0
            assert package.get("required") == ("true" if i == 0 else "false")
            _b64(package.get("hash"), 20)
            assert re.fullmatch(r"[0-9a-f]{64}", package.get("hash_sha256", ""))
        actions = manifest.findall("actions/action")
        assert actions
        for action in actions:
            assert action.get("event") in _ACTION_EVENTS
            _b64(action.get("sha256"), 32)
        [postinstall] = [a for a in actions if a.get("event") == "postinstall"]
        assert postinstall.get("DisablePayloadBackoff") == "true"
        assert postinstall.get("IsDeltaPayload") in (None, "true")
        # The action's hash is the main payload's, or the client fails the download with 10.
        main_sha256 = _b64(postinstall.get("sha256"), 32)
        assert main_sha256.hex() == packages[0].get("hash_sha256")
    return root


@pytest.mark.parametrize(("name", "response"), GOLDEN_RESPONSES, ids=_GOLDEN_IDS)
def test_clients_accept_golden_responses(name: str, response: Response) -> None:
    _check_clients_accept(build_response(response))
    _check_clients_accept((DATA / name).read_bytes())


def test_update_response_content() -> None:
    root = _check_clients_accept(build_response(Response(apps=(_app(OK),))))
    [url] = root.findall("app/updatecheck/urls/url")
    assert url.get("codebase") == MANIFEST.codebase + "/"
    names = [p.get("name") for p in root.iterfind("app/updatecheck/manifest/packages/package")]
    assert names == ["flatcar_production_update.gz", "oem-azure.gz"]  # main payload first
    [action] = root.findall("app/updatecheck/manifest/actions/action")
    assert action.get("IsDeltaPayload") is None
    assert action.get("sha256") == MANIFEST.sha256_b64
    assert root.find("app/updatecheck").get("PollInterval") is None  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("codebase", "expected"),
    [
        ("https://h/p", "https://h/p/"),
        ("https://h/p/", "https://h/p/"),
        ("https://h/", "https://h/"),
        ("https://h", "https://h/"),
        ("https://h/a?b=c&d=e", "https://h/a?b=c&d=e/"),
    ],
)
def test_codebase_ends_with_one_slash(codebase: str, expected: str) -> None:
    manifest = dataclasses.replace(MANIFEST, codebase=codebase)
    xml = build_response(Response(apps=(_app(UpdateCheckResult(UpdateStatus.OK, manifest)),)))
    [url] = etree.fromstring(xml).iterfind("app/updatecheck/urls/url")
    assert url.get("codebase") == expected


@pytest.mark.parametrize(("ping", "events"), [(False, 0), (True, 0), (False, 3), (True, 2)])
def test_ping_and_event_acknowledgements(ping: bool, events: int) -> None:
    xml = build_response(Response(apps=(_app(None, ping=ping, events=events),)))
    app = _check_clients_accept(xml).find("app")
    assert app is not None
    assert [c.tag for c in app] == ["ping"] * ping + ["event"] * events
    assert app.find("updatecheck") is None


@pytest.mark.parametrize("status", list(UpdateStatus))
def test_every_update_status_renders(status: UpdateStatus) -> None:
    manifest = MANIFEST if status is UpdateStatus.OK else None
    xml = build_response(Response(apps=(_app(UpdateCheckResult(status, manifest)),)))
    check = etree.fromstring(xml).find("app/updatecheck")
    assert check is not None
    assert check.get("status") == status.value


def test_poll_interval_on_noupdate() -> None:
    result = UpdateCheckResult(UpdateStatus.NO_UPDATE, poll_interval=3600)
    xml = build_response(Response(apps=(_app(result),)))
    assert b'<updatecheck status="noupdate" PollInterval="3600"></updatecheck>' in xml


def test_values_are_escaped() -> None:
    hostile = "{a\"b'c<d>e&f}"
    manifest = dataclasses.replace(MANIFEST, version="1&<2>", codebase='https://h/x?a=1&b="2"')
    response = Response(
        apps=(_app(UpdateCheckResult(UpdateStatus.OK, manifest), raw_app_id=hostile),),
        server='n"e<b>',
    )
    xml = build_response(response)
    root = _check_clients_accept(xml)
    assert root.get("server") == 'n"e<b>'
    app = root.find("app")
    assert app is not None
    assert app.get("appid") == hostile
    assert app.findtext("updatecheck/manifest/packages/package") == ""
    manifest_el = app.find("updatecheck/manifest")
    assert manifest_el is not None
    assert manifest_el.get("version") == "1&<2>"
    url = app.find("updatecheck/urls/url")
    assert url is not None
    assert url.get("codebase") == 'https://h/x?a=1&b="2"/'


def test_echoes_raw_appid_of_a_parsed_request() -> None:
    request = parse_request((Path(DATA) / "multi_app.xml").read_bytes())
    response = Response(
        apps=tuple(
            _app(
                NO_UPDATE if a.update_check else None,
                ping=a.ping,
                events=len(a.events),
                raw_app_id=a.raw_app_id,
            )
            for a in request.apps
        )
    )
    root = _check_clients_accept(build_response(response))
    assert [a.get("appid") for a in root.iterfind("app")] == [a.raw_app_id for a in request.apps]


def test_output_is_utf8() -> None:
    xml = build_response(Response(apps=(_app(None, raw_app_id="{é-ü}"),)))
    assert "{é-ü}".encode() in xml
    assert etree.fromstring(xml).find("app").get("appid") == "{é-ü}"  # type: ignore[union-attr]


# --- refusals: programmer errors ---------------------------------------------------------------


def _manifest(**changes: Any) -> Manifest:
    return dataclasses.replace(MANIFEST, **changes)


def _main(**changes: Any) -> Manifest:
    return _manifest(packages=(dataclasses.replace(MAIN, **changes), OEM_AZURE))


_URL_SAFE = DELTA_MANIFEST.sha256_b64.replace("+", "-").replace("/", "_")
_BAD_SHA256_B64: list[tuple[Manifest, str]] = [
    (_manifest(sha256_b64=MANIFEST.sha256_b64[:-1]), "44-char"),
    (_manifest(sha256_b64=MANIFEST.sha256_b64 + "="), "44-char"),
    # Non-canonical: stray bits in the last symbol; Python decodes it to the right hash anyway.
    (_manifest(sha256_b64=MANIFEST.sha256_b64[:-2] + "F="), "44-char"),
    (dataclasses.replace(DELTA_MANIFEST, sha256_b64=_URL_SAFE), "44-char"),
    (_manifest(sha256_b64=MAIN.sha256_hex), "44-char"),
    (_manifest(sha256_b64=""), "44-char"),
    # Well-formed, but another file's hash.
    (_manifest(sha256_b64=DELTA_MANIFEST.sha256_b64), "does not match"),
]

BAD_CHECKS: list[tuple[str, UpdateCheckResult, str]] = [
    ("ok without manifest", UpdateCheckResult(UpdateStatus.OK), "needs a manifest"),
    (
        "noupdate with manifest",
        UpdateCheckResult(UpdateStatus.NO_UPDATE, MANIFEST),
        "must not carry",
    ),
    ("zero poll interval", UpdateCheckResult(UpdateStatus.NO_UPDATE, poll_interval=0), "poll"),
    ("no packages", UpdateCheckResult(UpdateStatus.OK, _manifest(packages=())), "package"),
    ("empty codebase", UpdateCheckResult(UpdateStatus.OK, _manifest(codebase="")), "codebase"),
    ("blank codebase", UpdateCheckResult(UpdateStatus.OK, _manifest(codebase=" ")), "codebase"),
    ("empty version", UpdateCheckResult(UpdateStatus.OK, _manifest(version="")), "version"),
    ("size zero", UpdateCheckResult(UpdateStatus.OK, _main(size=0)), "size"),
    ("size negative", UpdateCheckResult(UpdateStatus.OK, _main(size=-1)), "size"),
    ("empty name", UpdateCheckResult(UpdateStatus.OK, _main(name="")), "name"),
    ("main not required", UpdateCheckResult(UpdateStatus.OK, _main(required=False)), "required"),
    (
        "extension first",
        UpdateCheckResult(UpdateStatus.OK, _manifest(packages=(OEM_AZURE, MAIN))),
        "required",
    ),
    (
        "sha1 as hex",
        UpdateCheckResult(UpdateStatus.OK, _main(sha1_b64=hashlib.sha1(b"x").hexdigest())),
        "sha1",
    ),
    (
        "sha256 hex upper case",
        UpdateCheckResult(UpdateStatus.OK, _main(sha256_hex=MAIN.sha256_hex.upper())),
        "sha256_hex",
    ),
    (
        "sha256 hex as base64",
        UpdateCheckResult(UpdateStatus.OK, _main(sha256_hex=MANIFEST.sha256_b64)),
        "sha256_hex",
    ),
] + [
    (f"bad sha256_b64 {i}", UpdateCheckResult(UpdateStatus.OK, manifest), fragment)
    for i, (manifest, fragment) in enumerate(_BAD_SHA256_B64)
]


@pytest.mark.parametrize(
    ("check", "fragment"), [c[1:] for c in BAD_CHECKS], ids=[c[0] for c in BAD_CHECKS]
)
def test_refuses_what_clients_reject(check: UpdateCheckResult, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        build_response(Response(apps=(_app(check),)))


def test_refuses_negative_counts() -> None:
    with pytest.raises(ValueError, match="event_count"):
        build_response(Response(apps=(_app(None, events=-1),)))
    with pytest.raises(ValueError, match="daystart"):
        build_response(Response(apps=(_app(None),), daystart_elapsed_seconds=-1))


def test_bad_sha256_b64_values_really_are_bad() -> None:
    # Guards the table above: no entry may be the canonical base64 of its manifest's main hash.
    for manifest, _ in _BAD_SHA256_B64:
        value = manifest.sha256_b64
        try:
            decoded = base64.b64decode(value, validate=True)
        except binascii.Error:
            continue
        canonical = base64.b64encode(decoded).decode() == value
        assert not (canonical and decoded.hex() == manifest.packages[0].sha256_hex), value
    assert "-" in _URL_SAFE or "_" in _URL_SAFE
