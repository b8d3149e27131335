"""`nebula policy show|set`, `nebula rollout status|history|pause|resume|activity`: the
operator's rollout commands over the admin API (hosts' holds: nebula.cli.instances)."""

from __future__ import annotations

from typing import Any

import click

from nebula.cli.client import ApiClient
from nebula.cli.named import ARCH
from nebula.cli.output import api_options, emit_json, json_option
from nebula.durations import format_duration


def _group_path(group: str) -> str:
    return f"/api/v1/groups/{group}"


def _print_policy(body: dict[str, Any]) -> None:
    p = body["policy"]
    state = "on" if p["updates_enabled"] else f"PAUSED ({p['paused_reason']}, by {p['paused_by']})"
    click.echo(f"group {body['group']} ({body['arch']}): updates {state}")
    rate = (
        f"{p['max_updates_per_period']} per {p['period']}"
        if p["max_updates_per_period"]
        else "none"
    )
    failures = [
        *([f"{p['pause_on_failed_hosts']} hosts"] if p["pause_on_failed_hosts"] else []),
        *([f"{p['pause_on_failed_percent']:g}%"] if p["pause_on_failed_percent"] else []),
    ]
    rows = [
        ("updates per period", rate),
        ("max concurrent", p["max_concurrent"] or "none"),
        ("update timeout", p["update_timeout"] or "none"),
        ("safe mode", "on" if p["safe_mode"] else "off"),
        ("pause on failures", " or ".join(failures) or "never"),
        ("windows", "; ".join(p["windows"]) or "always"),
        ("percentage", f"{p['percentage']:g}%"),
        ("floors", ", ".join(p.get("floors", [])) or "none"),
        ("pin", p["pin_version"] or "none (follows its channel)"),
        ("allow downgrade", "on" if p["allow_downgrade"] else "off"),
        ("reboot timeout", f"{p['reboot_timeout']} (warns)" if p["reboot_timeout"] else "none"),
        (
            "installed counts as updating",
            "on" if p.get("installed_counts_as_updating", True) else "off",
        ),
        ("retire after", p.get("retire_after") or "never"),
    ]
    for name, value in rows:
        click.echo(f"  {name:<29} {value}")


@click.group("policy")
def policy_group() -> None:
    """A group's rollout rules."""


@policy_group.command("show")
@api_options
@json_option
@click.argument("group")
@click.option("--arch", type=ARCH, help="Needed when the name exists for both arches")
@click.option("--app", help="The group's application (id or name), when the name is in several")
def policy_show(
    url: str | None, token: str | None, as_json: bool, group: str, arch: str | None, app: str | None
) -> None:
    """Show GROUP's rollout rules.

    \b
    Example:
      nebula policy show canary --arch amd64
    """
    body = ApiClient(url, token).get(f"{_group_path(group)}/policy", {"arch": arch, "app": app})
    emit_json(body) if as_json else _print_policy(body)


def _limit(value: str | None) -> Any:
    if value is None:
        return None
    if value.lower() == "none":
        return "none"
    if not value.isdigit() or int(value) < 1:
        raise click.BadParameter(f"{value!r}: a positive number, or none")
    return int(value)


def _on_off(value: str | None) -> bool | None:
    return None if value is None else value == "on"


ON_OFF = click.Choice(["on", "off"])


@policy_group.command("set")
@api_options
@json_option
@click.argument("group")
@click.option("--arch", type=ARCH, help="Needed when the name exists for both arches")
@click.option("--max-updates-per-period", help="At most N new updates in any --period (or none)")
@click.option("--period", help="The sliding window of --max-updates-per-period, e.g. 1h")
@click.option("--max-concurrent", help="At most N hosts updating at once (or none)")
@click.option(
    "--update-timeout",
    help="A host not installed this long after its grant has timed out, e.g. 2h (or none); "
    "the wait for its reboot after that is not counted",
)
@click.option("--safe-mode", type=ON_OFF, help="A new version goes to one host first")
@click.option(
    "--pause-on-failures",
    multiple=True,
    help="Pause the group at N failed hosts or P%% of attempts; repeat for both; 'none' for "
    "never (options are applied in order: 'none' then '5' keeps only 5 hosts)",
)
@click.option(
    "--window",
    "windows",
    multiple=True,
    help="'Mon-Fri 02:00-05:00 Europe/Berlin'; repeatable; 'none' for always",
)
@click.option("--percentage", type=click.FloatRange(0, 100), help="Share of hosts eligible")
@click.option(
    "--floor",
    "floors",
    multiple=True,
    help="Mark VERSION a floor of the group's channel (hosts below it pass through it); repeatable",
)
@click.option("--remove-floor", "removed_floors", multiple=True, help="Unmark a floor")
@click.option("--pin", help="Offer this version instead of the channel's, or none")
@click.option("--allow-downgrade", type=ON_OFF, help="Allow offering a lower version (with --pin)")
@click.option(
    "--reboot-timeout",
    help="Flag hosts installed and waiting longer than this for their reboot, e.g. 7d (a "
    "warning, never a failure; or none)",
)
@click.option(
    "--installed-counts-as-updating",
    type=ON_OFF,
    help="Whether an installed host waiting for its reboot holds a --max-concurrent slot",
)
@click.option(
    "--retire-after",
    help="Retire hosts not seen this long, e.g. 14d (the default): they leave every count "
    "until they check in again; or none",
)
@click.option("--app", help="The group's application (id or name), when the name is in several")
def policy_set(
    url: str | None,
    token: str | None,
    as_json: bool,
    group: str,
    arch: str | None,
    app: str | None,
    **opts: Any,
) -> None:
    """Change GROUP's rollout rules; options not given stay as they are.

    \b
    Example:
      nebula policy set canary --arch amd64 --max-concurrent 5 --safe-mode on
    """
    client = ApiClient(url, token)
    patch: dict[str, Any] = {}
    for name in ("max_updates_per_period", "max_concurrent"):
        if opts[name] is not None:
            patch[name] = _limit(opts[name])
    for name in ("period", "update_timeout", "reboot_timeout", "retire_after"):
        if opts[name] is not None:
            patch[name] = opts[name]
    for name in ("safe_mode", "allow_downgrade", "installed_counts_as_updating"):
        if opts[name] is not None:
            patch[name] = _on_off(opts[name])
    if opts["pause_on_failures"]:
        given = list(opts["pause_on_failures"])
        patch["pause_on_failures"] = None if given == ["none"] else given
    if opts["windows"]:
        patch["windows"] = [] if list(opts["windows"]) == ["none"] else list(opts["windows"])
    if opts["percentage"] is not None:
        patch["percentage"] = opts["percentage"]
    if opts["pin"] is not None:
        patch["pin_version"] = None if opts["pin"].lower() == "none" else opts["pin"]
    if opts["floors"]:
        patch["add_floors"] = list(opts["floors"])
    if opts["removed_floors"]:
        patch["remove_floors"] = list(opts["removed_floors"])
    if not patch:
        raise click.UsageError("nothing to change: give at least one option (see --help)")
    # One call, one transaction on the server: a refused part (a floor without a package, say)
    # leaves everything as it was.
    params = {k: v for k, v in (("arch", arch), ("app", app)) if v}
    body = client.call("PATCH", f"{_group_path(group)}/policy", json=patch, params=params)
    emit_json(body) if as_json else _print_policy(body)


@click.group("rollout")
def rollout_group() -> None:
    """Follow, pause and resume a group's rollout."""


def _eta(seconds: float | None) -> str:
    return "unknown" if seconds is None else format_duration(max(60, round(seconds)))


@rollout_group.command("status")
@api_options
@json_option
@click.argument("group")
@click.option("--arch", type=ARCH)
@click.option("--app", help="The group's application (id or name), when the name is in several")
def rollout_status(
    url: str | None, token: str | None, as_json: bool, group: str, arch: str | None, app: str | None
) -> None:
    """Where GROUP's rollout stands.

    \b
    Example:
      nebula rollout status canary --arch amd64
    """
    s = ApiClient(url, token).get(f"{_group_path(group)}/rollout", {"arch": arch, "app": app})
    if as_json:
        return emit_json(s)
    h = s["hosts"]
    state = {
        "paused": f"PAUSED: {s['paused_reason']}",
        "done": "done" + (" (for the policy in force)" if h["remaining"] else ""),
        "no_target": "no target",
    }.get(s["state"], s["state"])
    click.echo(f"group {s['group']} ({s['arch']}) -> {s['target'] or 'no target'}: {state}")
    if s["floors"]:
        click.echo(f"  floors       {', '.join(s['floors'])}")
    click.echo(f"  hosts        {h['total']}")
    click.echo(f"  complete     {h['complete']}")
    click.echo(f"  in progress  {h['in_progress']}")
    if h.get("installed"):
        waited = s.get("longest_reboot_wait_seconds")
        longest = f", longest {format_duration(max(1, round(waited)))}" if waited else ""
        slot = "holding" if s.get("installed_counts_as_updating", True) else "not holding"
        click.echo(
            f"    installed  {h['installed']} waiting for their reboot{longest} "
            f"({slot} a concurrency slot)"
        )
    if h.get("reboot_overdue"):
        click.echo(
            f"  WARNING      {h['reboot_overdue']} installed hosts waited past the reboot "
            f"timeout ({s.get('reboot_timeout')}): check their reboot strategy"
        )
    click.echo(f"  failed       {h['failed']}")
    click.echo(f"  timed out    {h['timed_out']}")
    held = ", ".join(f"{k} {v}" for k, v in sorted(h["held"].items())) or "none"
    click.echo(f"  held         {held}")
    click.echo(f"  not yet eligible {h['not_yet_eligible']}")
    click.echo(f"  remaining    {h['remaining']} ({h['to_update']} to update under this policy)")
    rate = s["rate_per_hour"]
    click.echo(
        f"  pace         {s['grants_last_hour']} grants in the last hour"
        + (f"; assuming {rate:g}/h" if rate else "")
    )
    if s["state"] == "done":
        click.echo("  finishes in  done")
    else:
        click.echo(f"  finishes in  {_eta(s['eta_seconds'])} (if windows and limits allow)")
    if s["next_window_opens"]:
        click.echo(f"  next window  {s['next_window_opens']}")


@rollout_group.command("history")
@api_options
@json_option
@click.argument("group")
@click.option("--arch", type=ARCH)
@click.option(
    "--window",
    type=click.Choice(["1h", "1d", "7d", "30d"]),
    default="1d",
    show_default=True,
    help="How far back (1h, 1d: every sample, a few minutes apart; 7d: hourly; 30d: every 4 hours)",
)
@click.option("--app", help="The group's application (id or name), when the name is in several")
def rollout_history(
    url: str | None,
    token: str | None,
    as_json: bool,
    group: str,
    arch: str | None,
    window: str,
    app: str | None,
) -> None:
    """GROUP's hosts by version and status over time.

    \b
    Example:
      nebula rollout history stable --arch amd64 --window 7d
    """
    query = {"arch": arch, "window": window, "app": app}
    h = ApiClient(url, token).get(f"{_group_path(group)}/history", query)
    if as_json:
        return emit_json(h)
    click.echo(f"group {h['group']} ({h['arch']}), last {h['window']}: {len(h['points'])} samples")
    for p in h["points"]:
        total = p["hosts"] or 1
        versions = "  ".join(
            f"{v or '?'} {n} ({100 * n / total:.0f}%)"
            for v, n in sorted(p["versions"].items(), key=lambda kv: -kv[1])
        )
        statuses = ", ".join(f"{s} {n}" for s, n in sorted(p["statuses"].items()))
        click.echo(f"  {p['at']}  {p['hosts']:>7} hosts  {versions}  [{statuses}]")


def _pause_resume_command(action: str, doc: str) -> None:
    @rollout_group.command(action, help=doc)
    @api_options
    @json_option
    @click.argument("group")
    @click.option("--arch", type=ARCH)
    @click.option("--reason", help="Recorded in the activity log")
    @click.option("--app", help="The group's application (id or name), when the name is in several")
    def command(
        url: str | None,
        token: str | None,
        as_json: bool,
        group: str,
        arch: str | None,
        reason: str | None,
        app: str | None,
    ) -> None:
        params = {k: v for k, v in (("arch", arch), ("app", app)) if v}
        body = ApiClient(url, token).call(
            "POST", f"{_group_path(group)}/{action}", json={"reason": reason or ""}, params=params
        )
        if as_json:
            return emit_json(body)
        if not body.get("changed", True):
            click.echo(f"nothing changed: {body['message']} (your request is in the activity log)")
        _print_policy(body)


_pause_resume_command(
    "pause",
    "Stop granting updates in GROUP (hosts already updating finish).\n\n\b\nExample:\n"
    "  nebula rollout pause canary --arch amd64 --reason 'error rate up'",
)
_pause_resume_command(
    "resume", "Grant updates in GROUP again.\n\n\b\nExample:\n  nebula rollout resume canary"
)


@rollout_group.command("activity")
@api_options
@json_option
@click.argument("group")
@click.option("--arch", type=ARCH)
@click.option("--limit", type=int, default=20, show_default=True)
@click.option("--app", help="The group's application (id or name), when the name is in several")
def rollout_activity(
    url: str | None,
    token: str | None,
    as_json: bool,
    group: str,
    arch: str | None,
    limit: int,
    app: str | None,
) -> None:
    """GROUP's activity log: pauses, resumes, policy changes.

    \b
    Example:
      nebula rollout activity canary --limit 50
    """
    body = ApiClient(url, token).get(
        f"{_group_path(group)}/activity", {"arch": arch, "limit": limit, "app": app}
    )
    if as_json:
        return emit_json(body)
    for a in body["activity"]:
        click.echo(f"{a['at']}  {a['actor']:<12} {a['action']:<10} {a['message']}")
