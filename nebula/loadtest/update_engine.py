"""What a Flatcar host's update_engine 0.4.10 sends, and what it demands of the answer.

`Host` builds the request bodies byte for byte as update_engine builds them (contract §2): the
update check (ping + updatecheck + one 3/x event), the ping-only request of a host waiting for
its reboot, and the event-only request. The tests' factories use this very class, so the golden
request files under tests/data/omaha/ pin these bytes.

`read_answer` reads a server's answer the way update_engine does (contract §4): the first app's
updatecheck status, and with `ok` every field the client needs, or the error 34 ("invalid Omaha
response") the client would report. The answer is untrusted: size-limited, parsed without
entities, DTDs or network, and a DOCTYPE is refused.

Pure: imports only the standard library, lxml and nebula.omaha.model (for the error-code flags).
No server code, no clock, no randomness.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lxml import etree

from nebula.omaha.model import FLAG_RESUMED, FLAG_SELF_HOSTED

__all__ = [
    "ERROR_DOWNLOAD",
    "ERROR_HASH_MISMATCH",
    "ERROR_INVALID_RESPONSE",
    "ERROR_SIZE_MISMATCH",
    "FLAG_RESUMED",
    "FLAG_SELF_HOSTED",
    "FLATCAR_APP_ID",
    "MAX_ANSWER",
    "Answer",
    "Host",
    "Offer",
    "http_error_code",
    "read_ack",
    "read_answer",
    "safe_token",
]

FLATCAR_APP_ID = "e96281a6-d1af-4bde-9a0a-97b76e56dc57"

# Base error codes of update_engine (contract §3); a self-hosted server sees code | FLAG.
ERROR_DOWNLOAD = 9
ERROR_HASH_MISMATCH = 10
ERROR_SIZE_MISMATCH = 11
ERROR_INVALID_RESPONSE = 34
_HTTP_ERROR_BASE = 2000

MAX_ANSWER = 1 << 20
"""Largest Omaha answer read, in bytes; a real one is under 2 KiB, even with extensions."""

# Versions and tracks go into our own XML attributes: a value from a server (or a flag) outside
# this alphabet could break out of the attribute, so it is refused rather than escaped.
_TOKEN_RE = re.compile(r"[0-9A-Za-z][0-9A-Za-z._+\-]{0,63}")

_SIZE_RE = re.compile(r"[0-9]{1,15}")

_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)


def safe_token(value: str) -> bool:
    """Whether `value` can be a version or track in a request (letters, digits, `._+-`)."""
    return _TOKEN_RE.fullmatch(value) is not None


def http_error_code(status: int) -> int:
    """The code update_engine reports for an update check answered with HTTP `status`."""
    return (_HTTP_ERROR_BASE + status) | FLAG_SELF_HOSTED


@dataclass
class Host:
    """A Flatcar host as its requests describe it; mutable, as a host's version and boot id
    change when it reboots into an update."""

    machine_id: str
    version: str = "3815.2.0"
    track: str = "stable"
    board: str = "amd64-usr"
    boot_id: str = "{0c288430-2504-4db4-913a-8c3de52afd07}"
    oem: str = "qemu"
    alias: str = ""
    delta_okay: bool = False
    app_id: str = "{" + FLATCAR_APP_ID + "}"
    oem_version: str = ""
    # "scheduler" for the periodic checks; `update_engine_client -check_for_update` sends
    # "ondemandupdate".
    install_source: str = "scheduler"

    def _app(self, inner: str) -> bytes:
        machine = "x86_64" if self.board.startswith("amd64") else "aarch64"
        return (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            '<request protocol="3.0" version="update_engine-0.4.10" '
            f'updaterversion="update_engine-0.4.10" installsource="{self.install_source}" '
            'ismachine="1">\n'
            f'    <os version="Chateau" platform="CoreOS" sp="{self.version}_{machine}"></os>\n'
            f'    <app appid="{self.app_id}" version="{self.version}" track="{self.track}" '
            f'bootid="{self.boot_id}" oem="{self.oem}" oemversion="{self.oem_version}" '
            'alephversion="3510.2.1" '
            f'machineid="{self.machine_id}" machinealias="{self.alias}" lang="en-US" '
            f'board="{self.board}" hardware_class="" '
            f'delta_okay="{"true" if self.delta_okay else "false"}" >\n'
            f"{inner}"
            "    </app>\n</request>\n"
        ).encode()

    def check(self, previous_version: str = "", event: str | None = None) -> bytes:
        """An update check; its event is `3/2 previousversion=...` unless `event` replaces it."""
        ev = (
            event
            or f'<event eventtype="3" eventresult="2" previousversion="{previous_version}"></event>'
        )
        return self._app(
            f'        <ping active="1"></ping>\n        <updatecheck></updatecheck>\n        {ev}\n'
        )

    def event(self, event_type: int, result: int, error_code: int | None = None) -> bytes:
        code = f' errorcode="{error_code}"' if error_code is not None else ""
        return self._app(
            f'        <event eventtype="{event_type}" eventresult="{result}"{code}></event>\n'
        )

    def ping(self) -> bytes:
        return self._app('        <ping active="1"></ping>\n')


@dataclass(frozen=True, slots=True)
class Offer:
    """An update as update_engine takes it from an `ok` answer: it downloads the first package
    from `codebase + name` (trying each codebase in order) and checks it against `size` and
    `sha256` (base64, from the postinstall action)."""

    version: str
    codebases: tuple[str, ...]
    name: str
    size: int
    sha256: str

    @property
    def urls(self) -> tuple[str, ...]:
        """Where the client fetches the payload: each codebase + name, concatenated as
        update_engine does (no URL join)."""
        return tuple(codebase + self.name for codebase in self.codebases)


@dataclass(frozen=True, slots=True)
class Answer:
    """What the client makes of an answer: an offer, nothing to do (both None), or a problem
    (the answer is unusable: the client reports error 34)."""

    offer: Offer | None = None
    problem: str | None = None


def _invalid(problem: str) -> Answer:
    return Answer(problem=problem)


def read_answer(body: bytes) -> Answer:
    """Read an update check's answer as update_engine does (contract §4)."""
    if len(body) > MAX_ANSWER:
        return _invalid(f"answer of over {MAX_ANSWER} bytes")
    if b"<!DOCTYPE" in body:
        return _invalid("answer carries a DOCTYPE")
    try:
        root = etree.fromstring(body, _PARSER)
    except etree.XMLSyntaxError as exc:
        return _invalid(f"answer is not XML: {exc}")
    if root.tag != "response":
        return _invalid(f"root element is {root.tag!r}, not 'response'")
    check = root.find("app/updatecheck")
    if check is None:
        return _invalid("no app/updatecheck in the answer")
    status = check.get("status")
    if status == "noupdate":
        return Answer()
    if status != "ok":
        # update_engine treats every status but these two (error-... included) as invalid.
        return _invalid(f"updatecheck status {status!r}")
    return _read_offer(check)


def read_ack(body: bytes, element: str) -> str | None:
    """What is wrong with the answer to an event or a ping-only request (`element` is "event"
    or "ping"), or None: the first app must acknowledge it with `<element status="ok">`
    (contract §4). update_engine itself ignores these answers; a server that does not
    acknowledge is still not speaking Omaha."""
    if len(body) > MAX_ANSWER:
        return f"{element} answer of over {MAX_ANSWER} bytes"
    if b"<!DOCTYPE" in body:
        return f"{element} answer carries a DOCTYPE"
    try:
        root = etree.fromstring(body, _PARSER)
    except etree.XMLSyntaxError as exc:
        return f"{element} answer is not XML: {exc}"
    ack = root.find(f"app/{element}") if root.tag == "response" else None
    if ack is None:
        return f"no response/app/{element} in the answer to a {element}"
    if ack.get("status") != "ok":
        return f"{element} answered with status {ack.get('status')!r}"
    return None


def _read_offer(check: etree._Element) -> Answer:
    codebases = tuple(url.get("codebase") or "" for url in check.findall("urls/url"))
    if not codebases:
        return _invalid("no urls/url in an ok answer")
    if not all(codebases):
        # A codebase without a trailing '/' is not refused: update_engine concatenates
        # codebase + name all the same, and the download of the wrong URL then fails (error 9).
        return _invalid("an empty url@codebase")
    manifest = check.find("manifest")
    version = manifest.get("version") if manifest is not None else None
    if not version:
        return _invalid("no manifest@version")
    if not safe_token(version):
        return _invalid(f"manifest@version {version[:70]!r} is not a version")
    package = check.find("manifest/packages/package")
    if package is None or not package.get("name"):
        return _invalid("no manifest/packages/package@name")
    size_text = package.get("size") or ""
    # ASCII digits only: str.isdigit() also accepts e.g. "²", which int() then refuses.
    size = int(size_text) if _SIZE_RE.fullmatch(size_text) else 0
    if size <= 0:
        return _invalid(f"package@size {size_text[:20]!r} is not a size above 0")
    sha256 = next(
        (
            a.get("sha256")
            for a in check.findall("manifest/actions/action")
            if a.get("event") == "postinstall"
        ),
        None,
    )
    if not sha256:
        return _invalid("no postinstall action with a sha256")
    name = package.get("name") or ""
    return Answer(offer=Offer(version, codebases, name, size, sha256))
