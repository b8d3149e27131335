"""What an admin route declares about itself for the OpenAPI document, and the shared schemas.

Each handler carries a `Doc` (`@doc(...)` under its `@routes.get(...)`): a summary, its query
parameters, its JSON body, its answer's schema and the errors only it answers. What every route
of a kind answers (401 and 429 for all, 403 and 400 for writes, 404 with a path parameter, ...)
is added by nebula.web.openapi.document from the route's shape, so it is said once.

Schemas are JSON Schema 2020-12 (OpenAPI 3.1): nullable fields are `["string", "null"]`.
Pure data: imports nothing of aiohttp, the store or the rest of Nebula.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

Schema = dict[str, Any]
F = TypeVar("F", bound=Callable[..., Any])
DOC_ATTRIBUTE = "__nebula_openapi__"


@dataclass(frozen=True, slots=True)
class Doc:
    """One operation: what the handler beside it takes and answers."""

    summary: str
    answer: Schema | None  # the success body's schema; None for an empty answer (204)
    status: int = 200  # the success status
    query: Mapping[str, Schema] = field(default_factory=dict)
    body: Schema | None = None  # a JSON request body
    body_media: str = "application/json"
    body_required: bool = False
    errors: tuple[int, ...] = ()  # statuses beyond those document.py adds from the route's shape
    description: str = ""


def doc(summary: str, answer: Schema | None, **kwargs: Any) -> Callable[[F], F]:
    """Attach a Doc to a handler (put it under the @routes decorator)."""
    declared = Doc(summary, answer, **kwargs)

    def attach(handler: F) -> F:
        setattr(handler, DOC_ATTRIBUTE, declared)
        return handler

    return attach


def doc_of(handler: object) -> Doc | None:
    found = getattr(handler, DOC_ATTRIBUTE, None)
    return found if isinstance(found, Doc) else None


# -- schema helpers ------------------------------------------------------------------------------


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(kind: str, **more: Any) -> Schema:
    return {"type": [kind, "null"], **more}


def array(items: Schema) -> Schema:
    return {"type": "array", "items": items}


def obj(required: Mapping[str, Schema], optional: Mapping[str, Schema] | None = None) -> Schema:
    """An object that has every `required` member (and may have the `optional` ones)."""
    return {
        "type": "object",
        "properties": {**required, **(optional or {})},
        "required": sorted(required),
    }


def listing(key: str, item: Schema, **more: Schema) -> Schema:
    """A list answer: {key: [item, ...], ...more}."""
    return obj({key: array(item), **more})


STR: Schema = {"type": "string"}
INT: Schema = {"type": "integer"}
BOOL: Schema = {"type": "boolean"}
NUM: Schema = {"type": "number"}
TIME: Schema = nullable("string", format="date-time")
ARCH: Schema = {"type": "string", "enum": ["amd64", "arm64"]}
APP: Schema = {"type": "string", "description": "an app id or name (default: Flatcar)"}
VERSION: Schema = {"type": "string", "description": "an OS version, e.g. 4152.2.3"}
FLAG: Schema = {"type": "string", "enum": ["true", "false", "1", "0"]}
NSTR: Schema = nullable("string")
NINT: Schema = nullable("integer")

ERROR_WORDS: Schema = nullable(
    "object",
    description="an update_engine error code in words",
    properties={"code": INT, "base": INT, "text": STR, "flags": {"type": "array", "items": STR}},
    required=["code", "base", "text", "flags"],
)
_FILE = obj(
    {
        "name": STR,
        "size": INT,
        "sha1": STR,
        "sha256": STR,
        "required": BOOL,
        "signer": NSTR,
    }
)
_GROUP_POLICY = obj(
    {
        "updates_enabled": BOOL,
        "paused_reason": NSTR,
        "max_updates_per_period": NINT,
        "period_seconds": NINT,
        "max_concurrent": NINT,
        "update_timeout_seconds": NINT,
        "safe_mode": BOOL,
        "pause_on_failed_hosts": NINT,
        "pause_on_failed_percent": nullable("number"),
        "windows": {"type": "array"},
        "percentage": NUM,
        "pin_version": NSTR,
        "allow_downgrade": BOOL,
        "reboot_timeout_seconds": NINT,
        "installed_counts_as_updating": BOOL,
        "retire_after_seconds": NINT,
    }
)
_POLICY = obj(
    {
        "updates_enabled": BOOL,
        "paused_reason": NSTR,
        "paused_by": NSTR,
        "paused_at": TIME,
        "max_updates_per_period": NINT,
        "period": NSTR,
        "max_concurrent": NINT,
        "update_timeout": NSTR,
        "safe_mode": BOOL,
        "pause_on_failed_hosts": NINT,
        "pause_on_failed_percent": nullable("number"),
        "windows": array(STR),
        "percentage": NUM,
        "pin_version": NSTR,
        "allow_downgrade": BOOL,
        "reboot_timeout": NSTR,
        "installed_counts_as_updating": BOOL,
        "retire_after": NSTR,
        "floors": array(STR),
    }
)

SCHEMAS: dict[str, Schema] = {
    "Problem": obj(
        {
            "type": {"type": "string", "format": "uri"},
            "title": STR,
            "status": INT,
            "detail": STR,
            "kind": {"type": "string", "description": "the error's class, e.g. ConflictError"},
            "error": {"type": "string", "description": "detail again, for older clients"},
        }
    ),
    "Principal": obj({"name": STR, "role": {"type": "string", "enum": ["admin", "viewer"]}}),
    "App": obj(
        {"id": STR, "name": STR, "description": STR, "created_at": TIME},
        {"channels": array(STR), "groups": array(STR), "packages": INT},
    ),
    "Package": obj(
        {
            "id": STR,
            "app_id": STR,
            "version": STR,
            "arch": STR,
            "kind": {"type": "string", "enum": ["full", "delta"]},
            "from_version": NSTR,
            "external": BOOL,
            "codebase": STR,
            "created_at": TIME,
            "created_by": NSTR,
            "files": array(_FILE),
        }
    ),
    "Channel": obj(
        {
            "id": INT,
            "app_id": STR,
            "name": STR,
            "arch": STR,
            "version": NSTR,
            "package_id": NSTR,
            "updated_at": TIME,
            "updated_by": NSTR,
        },
        {"floors": array(STR), "groups": array(STR)},
    ),
    "Group": obj(
        {
            "id": STR,
            "app_id": STR,
            "name": STR,
            "track": STR,
            "arch": STR,
            "channel": NSTR,
            "description": STR,
            "policy": _GROUP_POLICY,
        },
        {"instances": {"type": "object", "additionalProperties": INT}},
    ),
    "Instance": obj(
        {
            "machine_id": STR,
            "alias": NSTR,
            "ip": NSTR,
            "oem": NSTR,
            "oem_version": NSTR,
            "aleph_version": NSTR,
            "board": NSTR,
            "app_id": STR,
            "group": NSTR,
            "group_id": NSTR,
            "track": NSTR,
            "version": NSTR,
            "status": STR,
            "granted_version": NSTR,
            "granted_at": TIME,
            "status_changed_at": TIME,
            "completed_at": TIME,
            "last_check_at": TIME,
            "last_seen_at": TIME,
            "last_error_code": NINT,
            "installed_at": TIME,
            "reboot_wait_seconds": nullable("number"),
            "reboot_overdue": BOOL,
            "retired_at": TIME,
            "hold_reason": NSTR,
            "held": BOOL,
            "boot_id": NSTR,
            "arch": NSTR,
            "last_error": ERROR_WORDS,
        }
    ),
    "InstanceDetail": obj(
        {
            "machine_id": STR,
            "alias": NSTR,
            "ip": NSTR,
            "oem": NSTR,
            "oem_version": NSTR,
            "aleph_version": NSTR,
            "board": NSTR,
            "created_at": TIME,
            "last_seen_at": TIME,
            "apps": array(ref("Instance")),
            "history": array(
                obj(
                    {
                        "at": TIME,
                        "what": STR,
                        "version": STR,
                        "group": NSTR,
                        "error": ERROR_WORDS,
                        "count": NINT,
                    }
                )
            ),
            "events": array(ref("Event")),
        }
    ),
    "AliasSet": obj({"machine_id": STR, "alias": NSTR, "previous": NSTR}),
    "Event": obj(
        {
            "id": INT,
            "at": TIME,
            "machine_id": STR,
            "app_id": STR,
            "group": NSTR,
            "group_id": NSTR,
            "type": INT,
            "result": INT,
            "what": STR,
            "error": ERROR_WORDS,
            "version": NSTR,
            "previous_version": NSTR,
            "boot_id": NSTR,
        }
    ),
    "ActivityEntry": obj(
        {
            "id": INT,
            "at": TIME,
            "group": NSTR,
            "group_id": NSTR,
            "actor": STR,
            "action": STR,
            "message": STR,
            "detail": {"type": "object"},
        }
    ),
    "Token": obj(
        {
            "name": STR,
            "role": {"type": "string", "enum": ["admin", "viewer"]},
            "created_at": TIME,
            "last_used_at": TIME,
            "revoked_at": TIME,
        }
    ),
    "TokenCreated": obj(
        {
            "name": STR,
            "role": {"type": "string", "enum": ["admin", "viewer"]},
            "created_at": TIME,
            "token": {"type": "string", "description": "the secret, shown this once"},
        }
    ),
    "Policy": obj(
        {"group": STR, "arch": STR, "policy": _POLICY},
        {"changed": {"type": ["boolean", "array"], "items": STR}, "message": STR},
    ),
    "Rollout": obj(
        {
            "group": STR,
            "arch": STR,
            "target": NSTR,
            "floors": array(STR),
            "state": STR,
            "updates_enabled": BOOL,
            "paused_reason": NSTR,
            "hosts": {
                "type": "object",
                "description": "counts; held is a count per hold reason",
                "additionalProperties": {"type": ["integer", "object"]},
            },
            "grants_last_hour": INT,
            "rate_per_hour": nullable("number"),
            "eta_seconds": nullable("number"),
            "longest_reboot_wait_seconds": nullable("number"),
            "reboot_timeout": NSTR,
            "installed_counts_as_updating": BOOL,
            "next_window_opens": TIME,
        }
    ),
    "History": obj(
        {
            "group": STR,
            "arch": STR,
            "window": {"type": "string", "enum": ["1h", "1d", "7d", "30d"]},
            "points": array(
                obj(
                    {
                        "at": {"type": "string", "format": "date-time"},
                        "hosts": INT,
                        "versions": {"type": "object", "additionalProperties": INT},
                        "statuses": {"type": "object", "additionalProperties": INT},
                    }
                )
            ),
        }
    ),
    "SysextImage": obj(
        {
            "name": STR,
            "version": STR,
            "arch": {"type": "string", "enum": ["x86-64", "arm64"]},
            "file": STR,
            "sha256": STR,
            "size": INT,
            "created_at": TIME,
            "created_by": NSTR,
            "groups": array(STR),
            "urls": array(STR),
        }
    ),
    "SysextPromotion": obj({"group": STR, "index": STR, "images": array(STR)}),
    "SysextDemotion": obj({"group": STR, "removed": INT}),
    "Verification": obj(
        {
            "checked": INT,
            "blobs": INT,
            "bad": array(
                obj(
                    {
                        "package": STR,
                        "version": STR,
                        "arch": STR,
                        "name": STR,
                        "sha256": STR,
                        "size": INT,
                        "path": STR,
                        "problem": STR,
                    }
                )
            ),
        }
    ),
    "Activity": obj(
        {"at": TIME, "actor": STR, "action": STR, "message": STR, "detail": {"type": "object"}}
    ),
    "Floors": obj({"channel": STR, "arch": STR, "floors": array(STR)}),
    "Hold": obj({"machine_id": STR, "held": BOOL}),
    "HostDeleted": obj({"machine_id": STR, "deleted": BOOL, "apps": INT}),
    "OpenApi": obj({"openapi": STR, "info": {"type": "object"}, "paths": {"type": "object"}}),
}

# -- request bodies ------------------------------------------------------------------------------

INT_TEXT: Schema = {"type": "string", "pattern": "^-?[0-9]+$", "description": "an integer"}
SYSEXT_ARCH: Schema = {"type": "string", "enum": ["x86-64", "arm64"]}
PROMOTION_BODY = obj(
    {"name": STR, "version": STR, "group": STR},
    {"arch": nullable("string", enum=["x86-64", "arm64", None])},
)
REASON_BODY = obj({}, {"reason": STR})
UPLOAD_BODY = obj(
    {"payload": {"type": "string", "contentMediaType": "application/octet-stream"}},
    {"extension": array({"type": "string", "contentMediaType": "application/octet-stream"})},
)
_CRAU = obj({"signed_size": INT, "signed_sha256": STR, "signature": STR, "delta": BOOL})
EXTERNAL_BODY = obj(
    {
        "version": VERSION,
        "arch": ARCH,
        "base_url": {"type": "string", "format": "uri"},
        "files": {
            "type": "array",
            "minItems": 1,
            "description": "the main payload first",
            "items": obj({"name": STR, "size": INT, "sha1": STR, "sha256": STR}, {"crau": _CRAU}),
        },
    },
    {"from_version": VERSION},
)
_DURATION: Schema = nullable("string", description="a duration like 30m, 2h, 1d; null for none")
POLICY_BODY = obj(
    {},
    {
        "max_updates_per_period": NINT,
        "period": _DURATION,
        "max_concurrent": NINT,
        "update_timeout": _DURATION,
        "reboot_timeout": _DURATION,
        "retire_after": _DURATION,
        "safe_mode": BOOL,
        "allow_downgrade": BOOL,
        "installed_counts_as_updating": BOOL,
        "pause_on_failures": {"description": "a failure limit: hosts, a percentage, or none"},
        "windows": array({"type": "string", "description": "e.g. Mon-Fri 02:00-05:00 UTC"}),
        "percentage": {"type": "number", "minimum": 0, "maximum": 100},
        "pin_version": NSTR,
        "add_floors": array(VERSION),
        "remove_floors": array(VERSION),
    },
)
