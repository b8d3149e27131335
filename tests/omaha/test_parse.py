"""Tests of nebula.omaha.parse: golden requests of every kind the clients send, normalization,
and hostile input that must end in a ProtocolError and nothing else."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nebula.errors import ProtocolError, RequestTooLargeError
from nebula.omaha import (
    FLAG_DEV_IMAGE,
    FLAG_RESUMED,
    FLAG_SELF_HOSTED,
    MAX_APPS,
    MAX_BODY,
    MAX_EVENTS,
    AppRequest,
    Event,
    EventResult,
    EventType,
    Request,
    arch_of,
    parse_request,
)

DATA = Path(__file__).parent.parent / "data" / "omaha"
FLATCAR = "e96281a6-d1af-4bde-9a0a-97b76e56dc57"
FLATCAR_RAW = "{e96281a6-d1af-4bde-9a0a-97b76e56dc57}"


def _golden(name: str) -> bytes:
    return (DATA / name).read_bytes()


# What update_check.xml (the contract's example) says; the other goldens are told as changes to it.
CHECK_EVENT = Event(type=3, result=2, error_code=None, previous_version="")
BASE_APP = AppRequest(
    app_id=FLATCAR,
    raw_app_id=FLATCAR_RAW,
    version="3815.2.0",
    track="stable",
    boot_id="0c288430-2504-4db4-913a-8c3de52afd07",
    machine_id="dbff85b41ae14f41bde761eefbdafaac",
    machine_alias="",
    oem="qemu",
    oem_version="",
    aleph_version="3510.2.1",
    board="amd64-usr",
    hardware_class="",
    lang="en-US",
    delta_okay=False,
    ping=True,
    update_check=True,
    events=(CHECK_EVENT,),
)
BASE_REQUEST = Request(
    protocol="3.0",
    client_version="update_engine-0.4.10",
    updater_version="update_engine-0.4.10",
    install_source="scheduler",
    is_machine=True,
    os_version="Chateau",
    os_platform="CoreOS",
    os_sp="3815.2.0_x86_64",
    apps=(BASE_APP,),
)


def _with_app(**changes: Any) -> Request:
    return dataclasses.replace(BASE_REQUEST, apps=(dataclasses.replace(BASE_APP, **changes),))


def _event_only(event: Event) -> Request:
    return _with_app(ping=False, update_check=False, events=(event,))


GOLDEN_REQUESTS: list[tuple[str, Request]] = [
    ("update_check.xml", BASE_REQUEST),
    (
        "update_check_first_after_update.xml",
        dataclasses.replace(
            BASE_REQUEST,
            install_source="ondemandupdate",
            os_sp="4152.2.3_aarch64",
            apps=(
                dataclasses.replace(
                    BASE_APP,
                    version="4152.2.3",
                    track="beta",
                    boot_id="5b0f6c1e-8d2a-4c3b-9e7f-1a2b3c4d5e6f",
                    machine_id="6f2a9c0d4b1e4f7a8c3d2e1f0a9b8c7d",
                    machine_alias="web-01",
                    oem="azure",
                    oem_version="2.9.1.1-r1",
                    board="arm64-usr",
                    events=(Event(3, 2, None, "3815.2.0"),),
                ),
            ),
        ),
    ),
    ("rollback.xml", _with_app(events=(Event(3, 0, 268435500, None),))),
    ("ping_only.xml", _with_app(update_check=False, events=())),
    ("event_download_started.xml", _event_only(Event(13, 1, None, None))),
    ("event_download_finished.xml", _event_only(Event(14, 1, None, None))),
    ("event_installed.xml", _event_only(Event(3, 1, None, None))),
    ("event_error.xml", _event_only(Event(3, 0, 268435466, None))),
    (
        "stub.xml",
        dataclasses.replace(
            BASE_REQUEST,
            client_version="FlatcarUpdateEngine-0.1.0.0",
            updater_version="FlatcarUpdateEngine-0.1.0.0",
            os_sp="3815.2.0",
            apps=(
                dataclasses.replace(
                    BASE_APP,
                    oem="",
                    oem_version=None,
                    aleph_version=None,
                    board=None,
                    ping=False,
                    update_check=False,
                ),
            ),
        ),
    ),
    (
        "multi_app.xml",
        dataclasses.replace(
            BASE_REQUEST,
            apps=(
                dataclasses.replace(BASE_APP, raw_app_id=FLATCAR_RAW.upper()),
                AppRequest(
                    app_id="6a1b2c3d-0000-4000-8000-00000000beef",
                    raw_app_id="{6a1b2c3d-0000-4000-8000-00000000beef}",
                    version="1.2.3",
                    track="stable",
                    boot_id="0c288430-2504-4db4-913a-8c3de52afd07",
                    machine_id="dbff85b41ae14f41bde761eefbdafaac",
                    machine_alias=None,
                    oem=None,
                    oem_version=None,
                    aleph_version=None,
                    board=None,
                    hardware_class=None,
                    lang="en-US",
                    delta_okay=True,
                    ping=True,
                    update_check=False,
                    events=(),
                ),
            ),
        ),
    ),
    (
        "old_client_no_alias.xml",
        dataclasses.replace(
            BASE_REQUEST,
            client_version="update_engine-0.4.9",
            updater_version="update_engine-0.4.9",
            os_sp="2605.12.0_x86_64",
            apps=(
                dataclasses.replace(
                    BASE_APP,
                    version="2605.12.0",
                    oem="ami",
                    aleph_version="2605.12.0",
                    machine_alias=None,
                ),
            ),
        ),
    ),
]


@pytest.mark.parametrize(("name", "expected"), GOLDEN_REQUESTS, ids=[n for n, _ in GOLDEN_REQUESTS])
def test_golden_request(name: str, expected: Request) -> None:
    got = parse_request(_golden(name))
    # Field by field first, so a failure names the field; then the whole value.
    for field in dataclasses.fields(Request):
        if field.name != "apps":
            assert getattr(got, field.name) == getattr(expected, field.name), field.name
    assert len(got.apps) == len(expected.apps)
    for got_app, want_app in zip(got.apps, expected.apps, strict=True):
        for field in dataclasses.fields(AppRequest):
            assert getattr(got_app, field.name) == getattr(want_app, field.name), field.name
    assert got == expected


def test_golden_update_check_is_the_contract_example() -> None:
    # The file must stay byte for byte what update_engine 0.4.10 sends (contract §2).
    contract = Path("/work/shared/omaha-contract.md")
    if not contract.exists():
        pytest.skip("contract not available outside the workspace")
    example = contract.read_text().split("```xml\n", 1)[1].split("```", 1)[0]
    assert _golden("update_check.xml") == example.encode()


def test_parsed_values_are_the_frozen_model_classes() -> None:
    # parse builds its values as mutable twins and then gives them their frozen classes: what it
    # returns must be those very classes, immutable, hashing and comparing like values built
    # directly (build_response_cached keys a cache on such values).
    request = parse_request(_golden("update_check.xml"))
    app = request.apps[0]
    event = app.events[0]
    assert (type(request), type(app), type(event)) == (Request, AppRequest, Event)
    for value, name in ((request, "protocol"), (app, "app_id"), (event, "type")):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(value, name, None)
        with pytest.raises(dataclasses.FrozenInstanceError):
            delattr(value, name)
    assert hash(request) == hash(BASE_REQUEST)
    assert {BASE_REQUEST: "cached"}[request] == "cached"
    assert request == BASE_REQUEST


def test_golden_request_kinds() -> None:
    stub = parse_request(_golden("stub.xml"))
    assert stub.is_stub
    assert not parse_request(_golden("update_check.xml")).is_stub
    rollback = parse_request(_golden("rollback.xml")).apps[0].events[0]
    assert (rollback.type, rollback.result) == (EventType.UPDATE_COMPLETE, EventResult.ERROR)
    assert rollback.base_code == 44
    assert rollback.flags == FLAG_SELF_HOSTED
    error = parse_request(_golden("event_error.xml")).apps[0].events[0]
    assert error.base_code == 10
    assert error.flags == FLAG_SELF_HOSTED


# --- normalization ----------------------------------------------------------------------------


def _request(app_attrs: str = "", app_body: str = "", root_attrs: str = 'protocol="3.0"') -> bytes:
    return (
        f'<request {root_attrs}><os platform="CoreOS" sp="1.2.3_x86_64"/>'
        f'<app appid="{FLATCAR_RAW}" {app_attrs}>{app_body}</app></request>'
    ).encode()


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("{e96281a6-d1af-4bde-9a0a-97b76e56dc57}", FLATCAR),
        ("e96281a6-d1af-4bde-9a0a-97b76e56dc57", FLATCAR),
        ("{E96281A6-D1AF-4BDE-9A0A-97B76E56DC57}", FLATCAR),
        ("E96281A6-D1AF-4BDE-9A0A-97B76E56DC57", FLATCAR),
        ("  {e96281a6-d1af-4bde-9a0a-97b76e56dc57}  ", FLATCAR),
        ("{ e96281a6-d1af-4bde-9a0a-97b76e56dc57 }", FLATCAR),
        ("my-App", "my-app"),
    ],
)
def test_appid_normalization(raw: str, normalized: str) -> None:
    body = f'<request protocol="3.0"><app appid="{raw}"/></request>'.encode()
    app = parse_request(body).apps[0]
    assert app.app_id == normalized
    assert app.raw_app_id == raw  # echoed back exactly as sent


@pytest.mark.parametrize(
    ("attr", "raw", "expected"),
    [
        (
            "bootid",
            "{0C288430-2504-4DB4-913A-8C3DE52AFD07}",
            "0c288430-2504-4db4-913a-8c3de52afd07",
        ),
        ("bootid", "0c288430-2504-4db4-913a-8c3de52afd07", "0c288430-2504-4db4-913a-8c3de52afd07"),
        ("bootid", "", ""),
        ("machineid", "DBFF85B41AE14F41BDE761EEFBDAFAAC", "dbff85b41ae14f41bde761eefbdafaac"),
        (
            "machineid",
            "{dbff85b4-1ae1-4f41-bde7-61eefbdafaac}",
            "dbff85b4-1ae1-4f41-bde7-61eefbdafaac",
        ),
        ("machineid", " dbff85b41ae14f41bde761eefbdafaac ", "dbff85b41ae14f41bde761eefbdafaac"),
        ("machineid", "", ""),
    ],
)
def test_id_normalization(attr: str, raw: str, expected: str) -> None:
    app = parse_request(_request(f'{attr}="{raw}"')).apps[0]
    assert (app.boot_id if attr == "bootid" else app.machine_id) == expected


def test_absent_ids_are_none() -> None:
    app = parse_request(_request()).apps[0]
    assert app.boot_id is None
    assert app.machine_id is None


@pytest.mark.parametrize(
    ("attrs", "expected"),
    [
        ('delta_okay="true"', True),
        ('delta_okay="TRUE"', True),
        ('delta_okay=" True "', True),
        ('delta_okay="false"', False),
        ('delta_okay="1"', False),
        ('delta_okay=""', False),
        ("", False),
    ],
)
def test_delta_okay(attrs: str, expected: bool) -> None:
    assert parse_request(_request(attrs)).apps[0].delta_okay is expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [('ismachine="1"', True), ('ismachine="true"', True), ('ismachine="0"', False), ("", False)],
)
def test_is_machine(value: str, expected: bool) -> None:
    root = f'protocol="3.0" {value}'
    assert parse_request(_request(root_attrs=root)).is_machine is expected


@pytest.mark.parametrize(
    ("errorcode", "error_code", "base_code", "flags"),
    [
        ("44", 44, 44, 0),
        ("268435500", 268435500, 44, FLAG_SELF_HOSTED),
        ("268435466", 268435466, 10, FLAG_SELF_HOSTED),
        (str(5 | FLAG_SELF_HOSTED | FLAG_DEV_IMAGE), 5 | (3 << 28), 5, (3 << 28)),
        (
            str(9 | FLAG_SELF_HOSTED | FLAG_RESUMED),
            9 | FLAG_SELF_HOSTED | FLAG_RESUMED,
            9,
            FLAG_SELF_HOSTED | FLAG_RESUMED,
        ),
        ("2404", 2404, 2404, 0),  # 2000 + HTTP status on the check
        ("0", 0, 0, 0),
        ("4294967295", 0xFFFFFFFF, 0x0FFFFFFF, 0xF0000000),
        # A client printing the code signed: bit 31 set comes out negative.
        ("-1", 0xFFFFFFFF, 0x0FFFFFFF, 0xF0000000),
        (str(-(1 << 31) + 44), (1 << 31) | 44, 44, 1 << 31),
        (" 268435500 ", 268435500, 44, FLAG_SELF_HOSTED),
    ],
)
def test_errorcode_decoding(errorcode: str, error_code: int, base_code: int, flags: int) -> None:
    body = _request(app_body=f'<event eventtype="3" eventresult="0" errorcode="{errorcode}"/>')
    event = parse_request(body).apps[0].events[0]
    assert event.error_code == error_code
    assert event.base_code == base_code
    assert event.flags == flags


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("0", 0),
        ("7", 7),
        ("10", 10),
        ("99", 99),
        ("100", 100),
        ("007", 7),
        ("2147483647", 2**31 - 1),
    ],
)
def test_event_numbers(text: str, number: int) -> None:
    # Small numbers come from a table, the others through the regular expression: both agree.
    body = f'<event eventtype="{text}" eventresult="{text}" errorcode="{text}"/>'
    event = parse_request(_request(app_body=body)).apps[0].events[0]
    assert (event.type, event.result, event.error_code) == (number, number, number)


def test_event_without_errorcode() -> None:
    event = parse_request(_request(app_body='<event eventtype="13" eventresult="1"/>')).apps[0]
    assert event.events[0] == Event(13, 1, None, None)
    assert event.events[0].base_code is None
    assert event.events[0].flags == 0


@pytest.mark.parametrize(
    ("board", "sp", "arch"),
    [
        ("amd64-usr", "3815.2.0_x86_64", "amd64"),
        ("arm64-usr", "3815.2.0_aarch64", "arm64"),
        ("ARM64-USR", None, "arm64"),
        ("arm64-usr", "3815.2.0_x86_64", "arm64"),  # board wins over sp
        (None, "3815.2.0_x86_64", "amd64"),
        (None, "3815.2.0_aarch64", "arm64"),
        ("", "3815.2.0_aarch64", "arm64"),
        ("riscv-usr", "3815.2.0_x86_64", "amd64"),  # unknown board: fall back to sp
        (None, "3815.2.0", None),  # update_engine_stub
        (None, "3815.2.0_riscv64", None),
        ("riscv-usr", None, None),
        (None, None, None),
    ],
)
def test_arch_of(board: str | None, sp: str | None, arch: str | None) -> None:
    request = dataclasses.replace(BASE_REQUEST, os_sp=sp)
    app = dataclasses.replace(BASE_APP, board=board)
    assert arch_of(request, app) == arch


def test_arch_of_goldens() -> None:
    for name, arch in [
        ("update_check.xml", "amd64"),
        ("update_check_first_after_update.xml", "arm64"),
        ("stub.xml", None),
    ]:
        request = parse_request(_golden(name))
        assert arch_of(request, request.apps[0]) == arch, name


@pytest.mark.parametrize(
    ("version", "stub"),
    [
        ("FlatcarUpdateEngine-0.1.0.0", True),
        ("update_engine-0.4.10", False),
        ("ue-rs-0.0.0", False),
        (None, False),
    ],
)
def test_is_stub(version: str | None, stub: bool) -> None:
    assert dataclasses.replace(BASE_REQUEST, client_version=version).is_stub is stub


# --- accepted variations -----------------------------------------------------------------------


def test_minimal_request() -> None:
    request = parse_request(b'<request><app appid="x"/></request>')
    assert request.protocol == "3.0"  # a missing protocol is read as 3.0
    assert request == Request(
        protocol="3.0",
        client_version=None,
        updater_version=None,
        install_source=None,
        is_machine=False,
        os_version=None,
        os_platform=None,
        os_sp=None,
        apps=(
            AppRequest(
                app_id="x",
                raw_app_id="x",
                version=None,
                track=None,
                boot_id=None,
                machine_id=None,
                machine_alias=None,
                oem=None,
                oem_version=None,
                aleph_version=None,
                board=None,
                hardware_class=None,
                lang=None,
                delta_okay=False,
                ping=False,
                update_check=False,
                events=(),
            ),
        ),
    )


def test_without_xml_declaration_and_whitespace() -> None:
    golden = _golden("update_check.xml")
    stripped = golden.split(b"\n", 1)[1]
    assert parse_request(stripped) == BASE_REQUEST
    assert parse_request(b"\n\n  " + stripped + b"\n\n") == BASE_REQUEST


def test_comments_and_processing_instructions_are_ignored() -> None:
    golden = _golden("update_check.xml").replace(b"<ping", b"<!-- a comment --><?pi data?><ping", 1)
    assert parse_request(golden) == BASE_REQUEST


def test_namespaced_elements_match_on_local_name() -> None:
    body = (
        b'<o:request xmlns:o="urn:example" protocol="3.0"><o:os sp="1_aarch64"/>'
        b'<o:app appid="{ABC}"><o:ping/><o:updatecheck/>'
        b'<o:event eventtype="3" eventresult="2"/></o:app></o:request>'
    )
    request = parse_request(body)
    assert request.os_sp == "1_aarch64"
    app = request.apps[0]
    assert (app.app_id, app.ping, app.update_check) == ("abc", True, True)
    assert app.events == (Event(3, 2, None, None),)
    default_ns = b'<request xmlns="http://www.google.com/update2/request" protocol="3.0">'
    assert parse_request(default_ns + b'<app appid="a"><ping/></app></request>').apps[0].ping


def test_attribute_values_are_stripped_and_empty_stays_empty() -> None:
    body = _request(' version=" 3815.2.0 " track="" machinealias="  "', "")
    app = parse_request(body).apps[0]
    assert app.version == "3815.2.0"
    assert app.track == ""
    assert app.machine_alias == ""
    assert app.oem is None


def test_every_text_attribute_is_stripped() -> None:
    # Each element's attributes are read in one pass; no field may take its value unstripped.
    body = (
        b'<request protocol=" 3.0 " version=" v " updaterversion=" u " installsource=" s "'
        b' ismachine=" 1 "><os version=" o " platform=" p " sp=" 1_x86_64 "/>'
        b'<app appid=" {A} " version=" 1 " track=" t " bootid=" {B} " machineid=" {M} "'
        b' machinealias=" ma " oem=" oe " oemversion=" ov " alephversion=" al " board=" b "'
        b' hardware_class=" hc " lang=" l " delta_okay=" true ">'
        b'<event eventtype=" 3 " eventresult=" 2 " errorcode=" 7 " previousversion=" pv "/>'
        b"</app></request>"
    )
    request = parse_request(body)
    assert dataclasses.replace(request, apps=()) == Request(
        protocol="3.0",
        client_version="v",
        updater_version="u",
        install_source="s",
        is_machine=True,
        os_version="o",
        os_platform="p",
        os_sp="1_x86_64",
        apps=(),
    )
    assert request.apps == (
        AppRequest(
            app_id="a",
            raw_app_id=" {A} ",  # the one attribute kept as sent
            version="1",
            track="t",
            boot_id="b",
            machine_id="m",
            machine_alias="ma",
            oem="oe",
            oem_version="ov",
            aleph_version="al",
            board="b",
            hardware_class="hc",
            lang="l",
            delta_okay=True,
            ping=False,
            update_check=False,
            events=(Event(type=3, result=2, error_code=7, previous_version="pv"),),
        ),
    )


def test_ping_counts_whatever_its_attributes() -> None:
    for ping in ["<ping/>", '<ping active="0"/>', '<ping active="1" a="2"></ping>']:
        assert parse_request(_request(app_body=ping)).apps[0].ping, ping
    assert not parse_request(_request(app_body="<updatecheck/>")).apps[0].ping


def test_unknown_elements_and_attributes_are_ignored() -> None:
    body = _request(
        'cohort="x" unknown="y"',
        '<data name="z"/><updatecheck targetversionprefix="1."/>'
        '<extra><event eventtype="x"/></extra>',
    )
    app = parse_request(body).apps[0]
    assert app.update_check
    assert app.events == ()  # a nested, non-child <event> is not an event of the app


def test_first_os_wins() -> None:
    body = b'<request><os sp="1_x86_64"/><os sp="2_aarch64"/><app appid="a"/></request>'
    assert parse_request(body).os_sp == "1_x86_64"


def test_encodings_other_than_utf8() -> None:
    text = '<?xml version="1.0" encoding="UTF-16"?><request><app appid="é"/></request>'
    assert parse_request(text.encode("utf-16")).apps[0].raw_app_id == "é"
    latin = '<?xml version="1.0" encoding="ISO-8859-1"?><request><app appid="é"/></request>'
    assert parse_request(latin.encode("latin-1")).apps[0].raw_app_id == "é"


def test_limits_are_inclusive() -> None:
    apps = "".join(f'<app appid="a{i}"/>' for i in range(MAX_APPS))
    assert len(parse_request(f"<request>{apps}</request>".encode()).apps) == MAX_APPS
    events = '<event eventtype="3" eventresult="1"/>' * MAX_EVENTS
    assert len(parse_request(_request(app_body=events)).apps[0].events) == MAX_EVENTS
    padded = _request()
    padded += b" " * (MAX_BODY - len(padded))
    assert len(padded) == MAX_BODY
    assert parse_request(padded).apps[0].app_id == FLATCAR


# --- refusals ----------------------------------------------------------------------------------

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<request protocol="3.0"><app appid="&lol9;"/></request>"""

XXE = b"""<?xml version="1.0"?>
<!DOCTYPE request [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<request protocol="3.0"><app appid="a" track="&xxe;"/></request>"""

XXE_PARAMETER = b"""<?xml version="1.0"?>
<!DOCTYPE request [<!ENTITY % ext SYSTEM "http://127.0.0.1:9/evil.dtd"> %ext;]>
<request protocol="3.0"><app appid="a"/></request>"""

_APP = b'<app appid="a"/>'

HOSTILE: list[tuple[str, bytes, str]] = [
    ("billion laughs", BILLION_LAUGHS, "DTD"),
    ("xxe file", XXE, "DTD"),
    ("xxe parameter entity", XXE_PARAMETER, "DTD"),
    ("plain doctype", b"<!DOCTYPE request><request>" + _APP + b"</request>", "DTD"),
    (
        "doctype in utf-16",
        '<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE request><request><app appid="a"/>'
        "</request>".encode("utf-16"),
        "DTD",
    ),
    ("undefined entity", b"<request><app appid='&foo;'/></request>", "XML"),
    ("truncated", _golden("update_check.xml")[:-40], "XML"),
    ("binary garbage", bytes(range(256)) * 4, "XML"),
    ("nul bytes", b"\x00" * 100, "XML"),
    ("empty", b"", "empty"),
    ("whitespace only", b" \n\t ", "empty"),
    ("text only", b"hello", "XML"),
    ("two roots", b"<request><app appid='a'/></request><request/>", "XML"),
    ("bad encoding", b'<?xml version="1.0" encoding="x-nope"?><request/>', "XML"),
    ("invalid utf-8", b"<request><app appid='\xff\xfe'/></request>", "XML"),
    (
        "deeply nested",
        b'<request><app appid="a">' + b"<x>" * 8000 + b"</x>" * 8000 + b"</app></request>",
        "XML",
    ),
    ("deeply nested, unclosed", b"<a>" * 10_000, "XML"),
    ("wrong root", b'<response protocol="3.0"><app appid="a"/></response>', "<request>"),
    ("html", b"<html><body>hi</body></html>", "<request>"),
    ("no app", b'<request protocol="3.0"><os/></request>', "no <app>"),
    ("app only nested", b'<request><os><app appid="a"/></os></request>', "no <app>"),
    ("missing appid", b'<request protocol="3.0"><app version="1"/></request>', "appid"),
    ("empty appid", b'<request><app appid=""/></request>', "appid"),
    ("braces only appid", b'<request><app appid=" {} "/></request>', "appid"),
    ("protocol 2.0", b'<request protocol="2.0">' + _APP + b"</request>", "protocol"),
    ("protocol 3.1", b'<request protocol="3.1">' + _APP + b"</request>", "protocol"),
    ("protocol empty", b'<request protocol="">' + _APP + b"</request>", "protocol"),
    ("too many apps", b"<request>" + _APP * (MAX_APPS + 1) + b"</request>", "more than"),
]


def _event(attrs: str) -> bytes:
    return f'<request><app appid="a"><event {attrs}/></app></request>'.encode()


BAD_EVENTS: list[tuple[str, str]] = [
    ('eventtype="x" eventresult="1"', "eventtype"),
    ('eventtype="" eventresult="1"', "eventtype"),
    ('eventtype="3.0" eventresult="1"', "eventtype"),
    ('eventtype="+3" eventresult="1"', "eventtype"),
    ('eventtype="1_3" eventresult="1"', "eventtype"),
    ('eventtype="0x3" eventresult="1"', "eventtype"),
    ('eventtype="\u0663" eventresult="1"', "eventtype"),  # an Arabic-Indic digit three
    ('eventtype="-3" eventresult="1"', "eventtype"),
    ('eventtype="99999999999" eventresult="1"', "eventtype"),
    ('eventresult="1"', "eventtype"),
    ('eventtype="3"', "eventresult"),
    ('eventtype="3" eventresult="ok"', "eventresult"),
    ('eventtype="3" eventresult="0" errorcode="oops"', "errorcode"),
    ('eventtype="3" eventresult="0" errorcode=""', "errorcode"),
    ('eventtype="3" eventresult="0" errorcode="4294967296"', "errorcode"),
    ('eventtype="3" eventresult="0" errorcode="-2147483649"', "errorcode"),
]


def _assert_refused(body: bytes, fragment: str) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        parse_request(body)
    error = info.value
    assert type(error) is ProtocolError  # not the 413 subclass
    message = str(error)
    assert fragment in message
    assert "\n" not in message
    assert "Traceback" not in message
    assert len(message) < 300
    return error


@pytest.mark.parametrize(
    ("body", "fragment"), [h[1:] for h in HOSTILE], ids=[h[0] for h in HOSTILE]
)
def test_hostile_input_is_refused(body: bytes, fragment: str) -> None:
    _assert_refused(body, fragment)


@pytest.mark.parametrize(("attrs", "fragment"), BAD_EVENTS)
def test_bad_event_is_refused(attrs: str, fragment: str) -> None:
    _assert_refused(_event(attrs), fragment)


def test_too_many_events_is_refused() -> None:
    events = '<event eventtype="3" eventresult="1"/>' * (MAX_EVENTS + 1)
    _assert_refused(_request(app_body=events), "more than")


@pytest.mark.parametrize("size", [MAX_BODY + 1, 65 * 1024])
def test_oversized_body(size: int) -> None:
    body = _request()
    body += b" " * (size - len(body))
    with pytest.raises(RequestTooLargeError) as info:
        parse_request(body)
    assert str(MAX_BODY) in str(info.value)


def test_oversized_garbage_is_too_large_not_malformed() -> None:
    with pytest.raises(RequestTooLargeError):
        parse_request(b"\xff" * (MAX_BODY + 1))


# --- properties --------------------------------------------------------------------------------


def _parse_or_refuse(body: bytes) -> None:
    try:
        result = parse_request(body)
    except ProtocolError:
        return
    assert isinstance(result, Request)
    assert 1 <= len(result.apps) <= MAX_APPS
    for app in result.apps:
        assert app.app_id
        assert len(app.events) <= MAX_EVENTS


_FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_FUZZ
@given(st.binary(max_size=4096))
def test_arbitrary_bytes_parse_or_refuse(body: bytes) -> None:
    _parse_or_refuse(body)


@_FUZZ
@given(st.text(max_size=2048))
def test_arbitrary_text_parse_or_refuse(text: str) -> None:
    _parse_or_refuse(text.encode("utf-8", "surrogatepass"))


_ATTR_VALUES = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters='"&<'),
    max_size=20,
) | st.sampled_from(["3", "0", "-1", "4294967295", "268435500", "true", "{ABC}", ""])
_ATTR_NAMES = st.sampled_from(
    [
        "appid",
        "eventtype",
        "eventresult",
        "errorcode",
        "previousversion",
        "bootid",
        "machineid",
        "delta_okay",
        "protocol",
        "version",
        "board",
        "sp",
        "x",
    ]
)
_TAGS = st.sampled_from(["request", "app", "event", "ping", "updatecheck", "os", "x"])


@st.composite
def _xml_like(draw: st.DrawFn, depth: int = 0) -> str:
    tag = draw(_TAGS) if depth else draw(st.sampled_from(["request", "request", "response"]))
    attrs = draw(st.dictionaries(_ATTR_NAMES, _ATTR_VALUES, max_size=5))
    attr_text = "".join(f' {k}="{v}"' for k, v in attrs.items())
    children = draw(st.lists(_xml_like(depth + 1), max_size=4)) if depth < 3 else []
    return f"<{tag}{attr_text}>{''.join(children)}</{tag}>"


@_FUZZ
@given(_xml_like())
def test_request_shaped_input_parses_or_refuses(text: str) -> None:
    _parse_or_refuse(text.encode("utf-8", "surrogatepass"))
