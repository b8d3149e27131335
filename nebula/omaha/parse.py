"""Turn the body of an Omaha v3 POST into a `Request`, or refuse it with a `ProtocolError`.

The body is untrusted: it is size-limited before parsing, parsed by an lxml parser that never
resolves entities, loads DTDs or touches the network, and any document carrying a DOCTYPE is
refused outright (billion laughs, external entities). Elements are matched on their local name,
so a namespaced request is read like a plain one. Every attribute but `app@appid` is optional.
Error messages go back to the client: they name the problem, never a traceback.

Pure: imports only the standard library, lxml, `nebula.errors` and `nebula.omaha.model`.
No database, no web framework, no clock.
"""

from __future__ import annotations

import re
from dataclasses import fields, make_dataclass
from typing import TYPE_CHECKING, TypeVar, cast

from lxml import etree

from nebula.errors import ProtocolError, RequestTooLargeError
from nebula.omaha.model import AppRequest, Event, Request

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

__all__ = ["MAX_APPS", "MAX_BODY", "MAX_EVENTS", "parse_request"]

MAX_BODY = 64 * 1024
"""Largest accepted body in bytes; a real request is well under 2 KiB."""
MAX_APPS = 16
"""Most `<app>` elements in one request (update_engine sends one)."""
MAX_EVENTS = 32
"""Most `<event>` elements in one app (update_engine sends at most one)."""

PROTOCOL = "3.0"

# One parser for the process: lxml serializes its use between threads, and building a parser per
# request is needless work on the hot path.
_PARSER = etree.XMLParser(
    resolve_entities=False,
    no_network=True,
    load_dtd=False,
    huge_tree=False,
    remove_comments=True,
    remove_pis=True,
    # Nothing reads text between elements or xml:id: building neither is a fifth of the parse.
    remove_blank_text=True,
    collect_ids=False,
)

_D = TypeVar("_D", bound="DataclassInstance")


def _mutable_twin(cls: type[_D]) -> type[_D]:
    """A plain slotted dataclass with the fields, in order, of the frozen slotted dataclass `cls`.

    A frozen dataclass's __init__ sets each field through `object.__setattr__` and costs five
    times a plain one's (`AppRequest` has 17 fields, built on every check-in). So parse builds
    each value as its twin and `_frozen` then gives it its class, which Python allows because
    both have the same slots in the same order (were they ever to differ, every parse would fail
    with a TypeError). What comes out is the frozen value itself: its type, equality, hash and
    immutability; a twin never leaves this module. Typed as `cls` so that mypy checks the
    fields of every construction."""
    twin = make_dataclass(cls.__name__, [(f.name, f.type) for f in fields(cls)], slots=True)
    return cast("type[_D]", twin)


def _frozen(value: _D, cls: type[_D]) -> _D:
    object.__setattr__(value, "__class__", cls)
    return value


_REQUEST = _mutable_twin(Request)
_APP_REQUEST = _mutable_twin(AppRequest)
_EVENT = _mutable_twin(Event)

# The names parse looks for, as plain tags: update_engine sends no namespace, and taking the
# local name of each child is a Python call.
_PLAIN_TAGS = frozenset({"os", "app", "event", "ping", "updatecheck"})
_INT_RE = re.compile(r"-?[0-9]{1,10}")
# Event types and results are small numbers: taken from a table, they skip the regular
# expression and int().
_SMALL_INTS = {str(n): n for n in range(100)}
_U32 = 0xFFFF_FFFF
_MAX_MESSAGE_TEXT = 120


def parse_request(body: bytes) -> Request:
    """Parse one Omaha request body. Raises `ProtocolError` (`RequestTooLargeError` for a body
    over `MAX_BODY`) for anything that is not a usable Omaha v3 request."""
    if len(body) > MAX_BODY:
        raise RequestTooLargeError(
            f"request body of {len(body)} bytes is over the limit of {MAX_BODY} bytes"
        )
    if not body.strip():
        raise ProtocolError("request body is empty")
    # Cheap early refusal before libxml2 reads any DTD; the docinfo check below catches the
    # spellings this misses (e.g. a UTF-16 body).
    if b"<!DOCTYPE" in body:
        raise ProtocolError("DTDs are not allowed")
    try:
        root = etree.fromstring(body, _PARSER)
    except etree.LxmlError as exc:
        raise ProtocolError(f"request is not well-formed XML: {_clip(str(exc))}") from exc
    except ValueError as exc:  # lxml refuses some inputs with ValueError, not a syntax error
        raise ProtocolError(f"request is not usable XML: {_clip(str(exc))}") from exc
    docinfo = root.getroottree().docinfo
    if docinfo.internalDTD is not None or docinfo.externalDTD is not None or docinfo.doctype:
        raise ProtocolError("DTDs are not allowed")

    if _local(root) != "request":
        raise ProtocolError(f"root element is <{_clip(_local(root))}>, expected <request>")
    protocol = _attr(root, "protocol")
    if protocol is None:
        protocol = PROTOCOL  # update_engine always sends it; an omission is read as 3.0
    elif protocol != PROTOCOL:
        raise ProtocolError(f"protocol {_clip(protocol)!r} is not supported, only {PROTOCOL}")

    os_el: etree._Element | None = None
    app_els: list[etree._Element] = []
    for child in root:
        name = child.tag
        if name not in _PLAIN_TAGS:
            name = _local(child)
        if name == "app":
            app_els.append(child)
            if len(app_els) > MAX_APPS:
                raise ProtocolError(f"request has more than {MAX_APPS} <app> elements")
        elif name == "os" and os_el is None:
            os_el = child
    if not app_els:
        raise ProtocolError("request has no <app> element")

    request = _REQUEST(
        protocol=protocol,
        client_version=_attr(root, "version"),
        updater_version=_attr(root, "updaterversion"),
        install_source=_attr(root, "installsource"),
        is_machine=_bool_attr(root, "ismachine"),
        os_version=None if os_el is None else _attr(os_el, "version"),
        os_platform=None if os_el is None else _attr(os_el, "platform"),
        os_sp=None if os_el is None else _attr(os_el, "sp"),
        apps=tuple(_parse_app(el) for el in app_els),
    )
    return _frozen(request, Request)


def _parse_app(el: etree._Element) -> AppRequest:
    raw_app_id = el.get("appid")
    if raw_app_id is None:
        raise ProtocolError("an <app> element has no appid attribute")
    app_id = normalize_id(raw_app_id)
    if not app_id:
        raise ProtocolError("an <app> element has an empty appid attribute")

    ping = False
    update_check = False
    events: list[Event] = []
    for child in el:
        name = child.tag
        if name not in _PLAIN_TAGS:
            name = _local(child)
        if name == "event":
            if len(events) == MAX_EVENTS:
                raise ProtocolError(f"an <app> has more than {MAX_EVENTS} <event> elements")
            events.append(_parse_event(child))
        elif name == "ping":
            ping = True
        elif name == "updatecheck":
            update_check = True

    # The app's attributes read in one call and stripped in one pass, then looked up in a dict:
    # a dozen element lookups through lxml, or a Python call per value, cost more (this is
    # every check-in's work). (lxml's stubs allow bytes; parsed attributes are always str.)
    items = cast("list[tuple[str, str]]", el.items())
    attrs = {key: value.strip() for key, value in items}
    boot_id = attrs.get("bootid")
    machine_id = attrs.get("machineid")
    delta_okay = attrs.get("delta_okay")
    app = _APP_REQUEST(
        app_id=app_id,
        raw_app_id=raw_app_id,
        version=attrs.get("version"),
        track=attrs.get("track"),
        boot_id=None if boot_id is None else normalize_id(boot_id),
        machine_id=None if machine_id is None else normalize_id(machine_id),
        machine_alias=attrs.get("machinealias"),
        oem=attrs.get("oem"),
        oem_version=attrs.get("oemversion"),
        aleph_version=attrs.get("alephversion"),
        board=attrs.get("board"),
        hardware_class=attrs.get("hardware_class"),
        lang=attrs.get("lang"),
        delta_okay=delta_okay is not None and delta_okay.lower() == "true",
        ping=ping,
        update_check=update_check,
        events=tuple(events),
    )
    return _frozen(app, AppRequest)


def _parse_event(el: etree._Element) -> Event:
    event_type = _int_attr(el, "eventtype", lo=0, hi=0x7FFF_FFFF)
    if event_type is None:
        raise ProtocolError("an <event> element has no eventtype attribute")
    result = _int_attr(el, "eventresult", lo=0, hi=0x7FFF_FFFF)
    if result is None:
        raise ProtocolError("an <event> element has no eventresult attribute")
    # Error codes are 32-bit with flags in the top bits; some clients print them signed.
    error_code = _int_attr(el, "errorcode", lo=-(1 << 31), hi=_U32)
    if error_code is not None:
        error_code &= _U32
    event = _EVENT(
        type=event_type,
        result=result,
        error_code=error_code,
        previous_version=_attr(el, "previousversion"),
    )
    return _frozen(event, Event)


def _local(el: etree._Element) -> str:
    """The element's name without its namespace; "" for comments, entities and the like."""
    tag = el.tag
    if not isinstance(tag, str):
        return ""
    return tag.rpartition("}")[2]


def _attr(el: etree._Element, name: str) -> str | None:
    value = el.get(name)
    return None if value is None else value.strip()


def _bool_attr(el: etree._Element, name: str) -> bool:
    value = _attr(el, name)
    return value is not None and value.lower() in ("1", "true")


def _int_attr(el: etree._Element, name: str, *, lo: int, hi: int) -> int | None:
    value = _attr(el, name)
    if value is None:
        return None
    number = _SMALL_INTS.get(value)
    if number is None:
        if _INT_RE.fullmatch(value) is None:
            raise ProtocolError(
                f"<{_local(el)}> attribute {name}={_clip(value)!r} is not an integer"
            )
        number = int(value)
    if not lo <= number <= hi:
        raise ProtocolError(f"<{_local(el)}> attribute {name}={number} is out of range")
    return number


def normalize_id(value: str) -> str:
    """Lowercase, without surrounding whitespace or braces: "{ABC-1}" -> "abc-1"."""
    return value.strip().strip("{}").strip().lower()


def _clip(text: str) -> str:
    """Keep client-controlled text in messages short and on one line."""
    text = " ".join(text.split())
    if len(text) > _MAX_MESSAGE_TEXT:
        return text[: _MAX_MESSAGE_TEXT - 3] + "..."
    return text
