"""Turn a `Response` into the bytes of an Omaha v3 answer that update_engine and ue-rs accept.

The shape is fixed by the clients (see the contract, §4): no namespace, the XML declaration with
double quotes, then `<response>` with `<daystart>` and one `<app>` per requested app, whose children
come in the order ping, updatecheck, events. Leaf elements get explicit end tags (`<x></x>`), as the
clients' own examples do. The wire strings of statuses come from the enums in `model`, the one
table of them. Values are set through lxml, so everything is escaped.

`build_response` refuses, with `ValueError`, a response that a client would reject (an OK update
check without a usable manifest): that is a bug in the caller, not in the request.

Pure: imports only the standard library, lxml and `nebula.omaha.model`. No database, no web
framework, no clock.
"""

from __future__ import annotations

import base64
import functools
import re

from lxml import etree

from nebula.omaha.model import (
    AppResponse,
    Manifest,
    Response,
    UpdateCheckResult,
    UpdateStatus,
)

__all__ = ["build_response", "build_response_cached"]

_DECLARATION = b'<?xml version="1.0" encoding="UTF-8"?>\n'
_PROTOCOL = "3.0"

# Canonical standard base64 with "=" padding: ue-rs's decoder rejects stray bits in the last
# symbol, so only symbols whose low two bits are zero may precede the padding.
_B64_SHA256_RE = re.compile(r"[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=")
_B64_SHA1_RE = re.compile(r"[A-Za-z0-9+/]{26}[AEIMQUYcgkosw048]=")
_HEX_SHA256_RE = re.compile(r"[0-9a-f]{64}")

_SubElement = etree.SubElement


def build_response(response: Response) -> bytes:
    """Serialize `response` as UTF-8 bytes, XML declaration included."""
    if response.daystart_elapsed_seconds < 0:
        raise ValueError("daystart_elapsed_seconds must not be negative")
    root = etree.Element("response", {"protocol": _PROTOCOL, "server": response.server})
    daystart = _SubElement(
        root, "daystart", {"elapsed_seconds": str(response.daystart_elapsed_seconds)}
    )
    daystart.text = ""
    for app in response.apps:
        _add_app(root, app)
    return _DECLARATION + etree.tostring(root, encoding="UTF-8")


@functools.lru_cache(maxsize=1024)
def build_response_cached(response: Response) -> bytes:
    """build_response, remembered: a fleet gets the same few answers (noupdate with the same
    app id and poll interval, the same grant) within each second of `daystart`, and a lookup
    by the frozen Response's value costs a twentieth of building the document. Bounded: a
    flood of distinct responses only evicts."""
    return build_response(response)


def _add_app(root: etree._Element, app: AppResponse) -> None:
    if app.event_count < 0:
        raise ValueError(f"event_count of app {app.raw_app_id!r} must not be negative")
    app_el = _SubElement(root, "app", {"appid": app.raw_app_id, "status": app.status.value})
    app_el.text = ""
    if app.ping:
        _SubElement(app_el, "ping", {"status": "ok"}).text = ""
    if app.update_check is not None:
        _add_update_check(app_el, app.update_check)
    for _ in range(app.event_count):
        _SubElement(app_el, "event", {"status": "ok"}).text = ""


def _add_update_check(app_el: etree._Element, result: UpdateCheckResult) -> None:
    check = _SubElement(app_el, "updatecheck", {"status": result.status.value})
    if result.poll_interval is not None:
        if result.poll_interval <= 0:
            raise ValueError(f"poll_interval must be positive, not {result.poll_interval}")
        check.set("PollInterval", str(result.poll_interval))
    if result.status is UpdateStatus.OK:
        if result.manifest is None:
            raise ValueError("an OK update check needs a manifest")
        _add_manifest(check, result.manifest)
    elif result.manifest is not None:
        raise ValueError(f"a {result.status.value!r} update check must not carry a manifest")
    else:
        check.text = ""


def _add_manifest(check: etree._Element, manifest: Manifest) -> None:
    _validate_manifest(manifest)
    codebase = manifest.codebase if manifest.codebase.endswith("/") else manifest.codebase + "/"
    urls = _SubElement(check, "urls")
    _SubElement(urls, "url", {"codebase": codebase}).text = ""
    manifest_el = _SubElement(check, "manifest", {"version": manifest.version})
    packages = _SubElement(manifest_el, "packages")
    for package in manifest.packages:
        _SubElement(
            packages,
            "package",
            {
                "name": package.name,
                "hash": package.sha1_b64,
                "hash_sha256": package.sha256_hex,
                "size": str(package.size),
                "required": "true" if package.required else "false",
            },
        ).text = ""
    actions = _SubElement(manifest_el, "actions")
    action = _SubElement(
        actions,
        "action",
        {
            "event": "postinstall",
            "sha256": manifest.sha256_b64,
            # Without it, one failed download makes the client refuse this offer for days.
            "DisablePayloadBackoff": "true",
        },
    )
    if manifest.is_delta:
        action.set("IsDeltaPayload", "true")
    action.text = ""


def _validate_manifest(manifest: Manifest) -> None:
    """Refuse what update_engine (error 34, 10, 11) or ue-rs would reject."""
    if not manifest.version.strip():
        raise ValueError("manifest version must not be empty")
    if not manifest.codebase.strip():
        raise ValueError("manifest codebase must not be empty")
    if not manifest.packages:
        raise ValueError("manifest must list at least one package")
    if _B64_SHA256_RE.fullmatch(manifest.sha256_b64) is None:
        raise ValueError(
            f"manifest sha256_b64 {manifest.sha256_b64!r} is not the 44-char base64 of a SHA-256"
        )
    main = manifest.packages[0]
    if not main.required:
        raise ValueError(f"the main payload {main.name!r} (first package) must be required")
    for package in manifest.packages:
        if not package.name:
            raise ValueError("package name must not be empty")
        if package.size <= 0:
            raise ValueError(f"package {package.name!r} size must be positive, not {package.size}")
        if _B64_SHA1_RE.fullmatch(package.sha1_b64) is None:
            raise ValueError(
                f"package {package.name!r} sha1_b64 {package.sha1_b64!r} is not the base64 "
                "of a SHA-1"
            )
        if _HEX_SHA256_RE.fullmatch(package.sha256_hex) is None:
            raise ValueError(
                f"package {package.name!r} sha256_hex {package.sha256_hex!r} is not the "
                "lowercase hex of a SHA-256"
            )
    # The action's hash is what the client compares the downloaded main payload against.
    if base64.b64decode(manifest.sha256_b64).hex() != main.sha256_hex:
        raise ValueError(
            f"manifest sha256_b64 does not match the sha256_hex of the main payload {main.name!r}"
        )
