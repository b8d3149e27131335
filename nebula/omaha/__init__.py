"""Nebula's pure Omaha v3 protocol package: request parsing, response building, and their values.

`parse_request` turns a POST body into a `Request`; `build_response` turns a `Response` into bytes.
The values live in `model`. This package imports only the standard library, lxml and
`nebula.errors`: no database, no web framework, no clock.
"""

from __future__ import annotations

from nebula.omaha.build import build_response
from nebula.omaha.model import (
    FLAG_DEV_IMAGE,
    FLAG_RESUMED,
    FLAG_SELF_HOSTED,
    AppRequest,
    AppResponse,
    AppStatus,
    Event,
    EventResult,
    EventType,
    Manifest,
    PackageFile,
    Request,
    Response,
    UpdateCheckResult,
    UpdateStatus,
    arch_of,
)
from nebula.omaha.parse import MAX_APPS, MAX_BODY, MAX_EVENTS, parse_request

__all__ = [
    "FLAG_DEV_IMAGE",
    "FLAG_RESUMED",
    "FLAG_SELF_HOSTED",
    "MAX_APPS",
    "MAX_BODY",
    "MAX_EVENTS",
    "AppRequest",
    "AppResponse",
    "AppStatus",
    "Event",
    "EventResult",
    "EventType",
    "Manifest",
    "PackageFile",
    "Request",
    "Response",
    "UpdateCheckResult",
    "UpdateStatus",
    "arch_of",
    "build_response",
    "parse_request",
]
