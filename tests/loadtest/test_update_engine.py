"""Tests of nebula.loadtest.update_engine: the request bytes against the golden requests, and the
reading of answers as update_engine reads them (every field whose absence makes it fail with 34),
and of the acknowledgements of events and pings the simulator checks.

The golden files under tests/data/omaha/ are update_engine's own bytes (update_check.xml is the
contract's example), so `Host` building them exactly is what keeps the simulator and every test
that uses the factories honest.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from nebula.loadtest.update_engine import Host, Offer, http_error_code, read_ack, read_answer

GOLDEN = Path(__file__).parent.parent / "data" / "omaha"
HOST = Host(machine_id="dbff85b41ae14f41bde761eefbdafaac")


def _golden(name: str) -> bytes:
    return (GOLDEN / name).read_bytes()


@pytest.mark.parametrize(
    ("name", "body"),
    [
        ("update_check.xml", HOST.check()),
        ("ping_only.xml", HOST.ping()),
        ("event_download_started.xml", HOST.event(13, 1)),
        ("event_download_finished.xml", HOST.event(14, 1)),
        ("event_installed.xml", HOST.event(3, 1)),
        ("event_error.xml", HOST.event(3, 0, 10 | 1 << 28)),
        (
            "rollback.xml",
            HOST.check(event='<event eventtype="3" eventresult="0" errorcode="268435500"></event>'),
        ),
        (
            "update_check_first_after_update.xml",
            Host(
                machine_id="{6F2A9C0D4B1E4F7A8C3D2E1F0A9B8C7D}",
                version="4152.2.3",
                track="beta",
                board="arm64-usr",
                boot_id="{5B0F6C1E-8D2A-4C3B-9E7F-1A2B3C4D5E6F}",
                oem="azure",
                oem_version="2.9.1.1-r1",
                alias="web-01",
                install_source="ondemandupdate",
            ).check(previous_version="3815.2.0"),
        ),
    ],
)
def test_requests_are_the_golden_bytes(name: str, body: bytes) -> None:
    """Catches any drift of the request builder from update_engine's bytes (an attribute
    renamed, reordered or dropped, a missing newline, the wrong event in a check)."""
    assert body == _golden(name)


def test_the_golden_offer_is_read_as_the_client_reads_it() -> None:
    """Catches reading the wrong package (the extension instead of the first), the SHA-1 `hash`
    instead of the postinstall action's sha256, or a URL built by joining instead of
    concatenating."""
    answer = read_answer(_golden("update_ok.xml"))
    assert answer.problem is None
    assert answer.offer == Offer(
        version="4152.2.3",
        codebases=("https://updates.example.com/v1/payloads/flatcar/amd64/4152.2.3/",),
        name="flatcar_production_update.gz",
        size=456734521,
        sha256="poW3v3HhJUy053eJ5TnzRb5USleuOz13hwVa4tDJCVE=",
    )
    assert answer.offer.urls == (
        "https://updates.example.com/v1/payloads/flatcar/amd64/4152.2.3/"
        "flatcar_production_update.gz",
    )


def test_noupdate_is_neither_an_offer_nor_a_problem() -> None:
    """Catches a reader that reports `noupdate` as an error (the client sends no event for it)."""
    answer = read_answer(_golden("noupdate.xml"))
    assert answer.offer is None and answer.problem is None


_OK = _golden("update_ok.xml")


@pytest.mark.parametrize(
    ("label", "body"),
    [
        ("not XML", b"<response"),
        ("empty", b""),
        ("another root", b"<reply><app><updatecheck status='noupdate'/></app></reply>"),
        ("no updatecheck", b'<response protocol="3.0"><app status="ok"></app></response>'),
        ("error status", _OK.replace(b'updatecheck status="ok"', b'updatecheck status="error-x"')),
        ("no status", _OK.replace(b'updatecheck status="ok"', b"updatecheck")),
        ("no urls", _OK.replace(b"<urls>", b"<nourls>").replace(b"</urls>", b"</nourls>")),
        ("empty codebase", _OK.replace(b'codebase="https', b'codebase="" x="https')),
        ("no manifest version", _OK.replace(b'<manifest version="4152.2.3">', b"<manifest>")),
        ("version breaks XML", _OK.replace(b'version="4152.2.3"', b'version="4&quot; x=&quot;"')),
        ("no package", _OK.replace(b"<package ", b"<pkg ").replace(b"</package>", b"</pkg>")),
        ("zero size", _OK.replace(b'size="456734521"', b'size="0"')),
        ("negative size", _OK.replace(b'size="456734521"', b'size="-5"')),
        ("unicode digits", _OK.replace(b'size="456734521"', 'size="4\u00b2"'.encode())),
        ("no postinstall", _OK.replace(b'event="postinstall"', b'event="install"')),
        ("no sha256", _OK.replace(b'sha256="poW3', b'x256="poW3')),
        ("a DOCTYPE", b'<!DOCTYPE response [<!ENTITY a "b">]>' + _OK.split(b"\n", 1)[1]),
        ("too big", b"<response>" + b" " * (1 << 20) + b"</response>"),
    ],
)
def test_answers_update_engine_refuses_are_problems(label: str, body: bytes) -> None:
    """Catches a reader more lenient than update_engine (an answer it would fail with 34 taken
    as an offer), and one that crashes on hostile input instead of saying what is wrong."""
    answer = read_answer(body)
    assert answer.offer is None
    assert answer.problem, label


def test_a_codebase_without_a_slash_is_concatenated_as_the_client_does() -> None:
    """Catches a reader that refuses such an answer (update_engine takes it, then fetches the
    concatenated, wrong URL) or one that repairs it by joining."""
    body = _OK.replace(b'4152.2.3/"', b'4152.2.3"')
    answer = read_answer(body)
    assert answer.offer is not None
    assert answer.offer.urls == (
        "https://updates.example.com/v1/payloads/flatcar/amd64/4152.2.3"
        "flatcar_production_update.gz",
    )


def test_http_error_codes_carry_the_self_hosted_flag() -> None:
    """Catches a code without the 1<<28 flag or without the 2000 base."""
    assert http_error_code(503) == 2503 | 1 << 28


@pytest.mark.parametrize(
    ("body", "element", "problem"),
    [
        (_golden("event_ack.xml"), "event", None),
        (b'<response><app><ping status="ok"/></app></response>', "ping", None),
        (b'<response><app><ping status="ok"/></app></response>', "event", "no response/app"),
        (b'<response><app><event status="error"/></app></response>', "event", "status"),
        (b"<html>not found</html>", "event", "no response/app"),
        (b"<response", "ping", "not XML"),
        (b'<!DOCTYPE r [<!ENTITY e "x">]><response/>', "event", "DOCTYPE"),
        (b"<response>" + b" " * (1 << 20) + b"</response>", "event", "over"),
    ],
)
def test_read_ack(body: bytes, element: str, problem: str | None) -> None:
    """An event or ping is acknowledged by the first app's `<event|ping status="ok">`."""
    got = read_ack(body, element)
    if problem is None:
        assert got is None
    else:
        assert got is not None and problem in got
