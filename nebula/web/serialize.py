"""JSON shapes of the admin API: one function per object, used by every route that returns it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from nebula.errorcodes import describe, describe_event
from nebula.store.catalog import payload_codebase
from nebula.store.models import Channel, Event, Group, InstanceApp, Package


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def package_json(package: Package, base_url: str) -> dict[str, Any]:
    return {
        "id": package.id,
        "app_id": package.app_id,
        "version": package.version,
        "arch": package.arch,
        "kind": package.kind,
        "from_version": package.from_version,
        "external": package.base_url is not None,
        "codebase": package.base_url or payload_codebase(base_url, package.id),
        "created_at": iso(package.created_at),
        "created_by": package.created_by,
        "files": [
            {
                "name": f.name,
                "size": f.size,
                "sha1": f.sha1,
                "sha256": f.sha256,
                "required": f.position == 0,
                "signer": f.signer,
            }
            for f in package.files
        ],
    }


def channel_json(channel: Channel, package: Package | None) -> dict[str, Any]:
    return {
        "id": channel.id,
        "app_id": channel.app_id,
        "name": channel.name,
        "arch": channel.arch,
        "version": package.version if package else None,
        "package_id": channel.package_id,
        "updated_at": iso(channel.updated_at),
        "updated_by": channel.updated_by,
    }


def group_json(group: Group, channel: str | None) -> dict[str, Any]:
    return {
        "id": group.id,
        "app_id": group.app_id,
        "name": group.name,
        "track": group.track,
        "arch": group.arch,
        "channel": channel,
        "description": group.description,
        "policy": {
            "updates_enabled": group.updates_enabled,
            "paused_reason": group.paused_reason,
            "max_updates_per_period": group.max_updates_per_period,
            "period_seconds": group.period_seconds,
            "max_concurrent": group.max_concurrent,
            "update_timeout_seconds": group.update_timeout_seconds,
            "safe_mode": group.safe_mode,
            "pause_on_failed_hosts": group.pause_on_failed_hosts,
            "pause_on_failed_percent": group.pause_on_failed_percent,
            "windows": group.windows,
            "percentage": group.percentage,
            "pin_version": group.pin_version,
            "allow_downgrade": group.allow_downgrade,
            "reboot_timeout_seconds": group.reboot_timeout_seconds,
            "installed_counts_as_updating": group.installed_counts_as_updating,
            "retire_after_seconds": group.retire_after_seconds,
        },
    }


@dataclass(frozen=True, slots=True)
class RebootWaitJson:
    """How long an installed host has waited for its reboot, and whether that is overdue."""

    seconds: float | None
    overdue: bool

    @classmethod
    def of(cls, state: InstanceApp, reboot_timeout: int | None, now: datetime) -> RebootWaitJson:
        if state.status != "installed" or state.installed_at is None:
            return cls(None, False)
        waited = max(0.0, (now - state.installed_at).total_seconds())
        return cls(waited, reboot_timeout is not None and waited >= reboot_timeout)


def instance_json(
    state: InstanceApp,
    instance: Any,
    group_name: str | None,
    hold_reason: str | None,
    wait: RebootWaitJson | None = None,
) -> dict[str, Any]:
    wait = wait or RebootWaitJson(None, False)
    return {
        "machine_id": state.instance_id,
        "alias": instance.alias,
        "ip": instance.ip,
        "oem": instance.oem,
        "oem_version": instance.oem_version,
        "aleph_version": instance.aleph_version,
        "board": instance.board,
        "app_id": state.app_id,
        "group": group_name,
        "group_id": state.group_id,
        "track": state.track,
        "version": state.version,
        "status": state.status,
        "granted_version": state.granted_version,
        "granted_at": iso(state.granted_at),
        "status_changed_at": iso(state.status_changed_at),
        "completed_at": iso(state.completed_at),
        "last_check_at": iso(state.last_check_at),
        "last_seen_at": iso(instance.last_seen_at),
        "last_error_code": state.last_error_code,
        "installed_at": iso(state.installed_at),
        "reboot_wait_seconds": wait.seconds,  # installed and waiting for its reboot
        "reboot_overdue": wait.overdue,  # waited past the group's reboot timeout (a warning)
        "retired_at": iso(state.retired_at),  # silent past retire_after; in no count
        "hold_reason": hold_reason,  # under the policy in force, not at its last check
        "held": state.held,
        "boot_id": state.boot_id,
    }


def event_json(event: Event, group_name: str | None) -> dict[str, Any]:
    """An event a host sent, with its type, result and error code in words."""
    return {
        "id": event.id,
        "at": iso(event.created_at),
        "machine_id": event.instance_id,
        "app_id": event.app_id,
        "group": group_name,
        "group_id": event.group_id,
        "type": event.event_type,
        "result": event.event_result,
        "what": describe_event(event.event_type, event.event_result, event.previous_version),
        "error": describe(event.error_code),
        "version": event.version,
        "previous_version": event.previous_version,
        "boot_id": event.boot_id,
    }


def activity_json(entry: Any, group_name: str | None = None) -> dict[str, Any]:
    return {
        "id": entry.id,
        "at": iso(entry.created_at),
        "group": group_name,
        "group_id": entry.group_id,
        "actor": entry.actor,
        "action": entry.action,
        "message": entry.message,
        "detail": entry.detail,
    }
