"""Settings: one frozen object, loaded once from flags, environment and an optional TOML file.

This is the only module that reads os.environ. Precedence, highest first: command-line flags,
`NEBULA_<NAME>` environment variables, the TOML file (`--config` / `NEBULA_CONFIG`), defaults.
The names (db, listen, public_url, payload_dir, trusted_key, ...) are a public interface:
operators script against them, so keep them. Imports only nebula.errors and nebula.durations.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from nebula.durations import parse_duration
from nebula.errors import ConfigError

DEFAULT_DB = "sqlite+aiosqlite:///nebula.db"
DEFAULT_LISTEN = "127.0.0.1:8000"
DEFAULT_PAYLOAD_DIR = "payloads"


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the server needs to know, typed. Built by `load_settings`."""

    db: str = DEFAULT_DB
    listen: str = DEFAULT_LISTEN
    public_url: str = ""  # empty: derived from `listen` (fine for a lab, wrong behind a proxy)
    payload_dir: str = DEFAULT_PAYLOAD_DIR
    # Extra PEM files trusted for payload signatures, on top of Flatcar's official key.
    trusted_key: tuple[str, ...] = ()
    # Set to false to trust only the operator's keys (custom builds that never carry Flatcar's).
    trust_flatcar_key: bool = True
    migrate: bool = True  # `serve` migrates the database on start
    log_level: str = "info"
    # "text" (one human line per record) or "json" (one JSON object per line, for collectors).
    log_format: str = "text"
    # Seconds a host is told to wait between checks (clamped by the client to [45 min, 4 h]).
    poll_interval: int = 0
    # How long the in-process cache of channels/groups/packages may be stale on another replica.
    cache_ttl: float = 5.0
    db_pool_size: int = 10
    # HOST:PORT of a second listener that alone serves /api/ and /metrics (empty: the main one
    # serves them too). Hosts then cannot reach the admin API even without a proxy in front.
    admin_listen: str = ""
    # How long events are kept, e.g. "90d"; empty keeps them forever.
    event_retention: str = "90d"
    # How long grants, failures and activity-log entries are kept (empty: forever). A grant or
    # failure a rollout rule still reads is kept longer (nebula.store.retention).
    grant_retention: str = "90d"
    failure_retention: str = "90d"
    activity_retention: str = "365d"
    # Seconds between sweeps for hosts past their group's update timeout.
    sweep_interval: float = 30.0
    # Seconds between the samples of every group's status counts that rollout history reads
    # (a divisor of 3600, so that hourly samples exist), and how long samples are kept.
    history_interval: int = 300
    history_retention: str = "30d"
    # Reverse proxies (addresses or CIDRs) whose X-Forwarded-For is believed for hosts' IPs.
    trusted_proxy: tuple[str, ...] = ()
    # Seconds between the batched writes of steady-state check-ins' last-seen times: what a
    # crash may lose of them (never a grant or an event).
    checkin_interval: float = 1.0
    # Hosts whose state each process keeps in memory to answer steady-state check-ins (0: none,
    # every check reads it from the database). About 150 bytes each.
    host_cache_size: int = 500_000
    # Processes serving the listen address(es): 0 picks the number of CPUs on PostgreSQL and 1
    # on SQLite (one writer: more than 1 is refused there).
    workers: int = 0
    # Seconds in-flight requests get to finish after SIGTERM/SIGINT before they are cut; then
    # the pending last-seen times are flushed and the process exits.
    shutdown_timeout: float = 20.0
    # Serve `GET /v1/ignition/{group}` (a host config any host may fetch without a token);
    # off, that route answers 404.
    ignition_public: bool = False
    # Seconds a connection gets to send a request's line and headers, counted from its start
    # or from its previous answer; an idle keep-alive connection is closed after it too. A
    # client that trickles its headers is cut off then.
    header_timeout: float = 15.0
    # Seconds a host gets to send an Omaha request's whole body (64 KiB at most), and the
    # longest an admin request's body (an upload) may go without a byte: a client that stalls
    # half-way is answered 408 then. Below shutdown_timeout, so that a SIGTERM's drain answers
    # a stalled request rather than cutting it.
    body_timeout: float = 10.0
    # Bytes all of a request's header lines may take together (431 beyond); each line is also
    # limited to 8190 bytes and a request to 128 of them.
    max_header_bytes: int = 32768
    # Bad admin tokens (wrong or revoked) one address may send within auth_failure_window
    # seconds before its admin requests are answered 429 until the oldest is that old; counted
    # in each process's memory. 0: no limit.
    auth_failure_limit: int = 20
    auth_failure_window: float = 60.0
    # PEM certificate (chain) and private key: both set, every listener (public and admin)
    # speaks HTTPS only.
    tls_cert: str = ""
    tls_key: str = ""
    # A secret path prefix for what hosts reach, e.g. "/s3cr3t": the Omaha endpoint becomes
    # /s3cr3t/v1/update/ and the payload files /s3cr3t/v1/payloads/..., and the plain paths are
    # 404. Empty: none.
    omaha_prefix: str = ""
    # A token Prometheus must send (Authorization: Bearer) to read /metrics; empty: none. For a
    # deployment without a separate admin listener, where hosts could otherwise read it.
    metrics_token: str = ""

    @property
    def is_sqlite(self) -> bool:
        return self.db.partition("://")[0].partition("+")[0] == "sqlite"

    @property
    def host(self) -> str:
        return split_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return split_listen(self.listen)[1]

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert)

    @property
    def host_base_url(self) -> str:
        """The base URL hosts use (the Omaha endpoint and the payload files are under it): the
        public one plus the secret prefix, without a trailing slash."""
        return self.base_url + self.omaha_prefix

    @property
    def base_url(self) -> str:
        """The public base URL without a trailing slash."""
        if self.public_url:
            return self.public_url.rstrip("/")
        host, port = split_listen(self.listen)
        if host in ("", "0.0.0.0", "::"):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"{'https' if self.tls else 'http'}://{host}:{port}"


def split_listen(listen: str) -> tuple[str, int]:
    """'HOST:PORT' (or '[::1]:PORT', or ':PORT') -> (host, port)."""
    host, sep, port = listen.rpartition(":")
    # isascii: str.isdigit() also accepts digits int() cannot read ("²").
    if not sep or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise ConfigError(f"listen must be HOST:PORT, got {listen!r}")
    return host.strip("[]"), int(port)


_LIST_SEPARATORS = {"trusted_proxy": ","}
_BOOL_TRUE = {"1", "true", "yes", "on"}
_BOOL_FALSE = {"0", "false", "no", "off"}


def _coerce(name: str, kind: Any, value: Any) -> Any:
    try:
        if kind in ("bool", bool):
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in _BOOL_TRUE:
                return True
            if text in _BOOL_FALSE:
                return False
            raise ValueError(value)
        if kind in ("int", int):
            return int(value)
        if kind in ("float", float):
            return float(value)
        if kind in ("tuple[str, ...]",):
            if isinstance(value, str):
                # The environment holds a list as one string: key files as a path list
                # ("a.pem:b.pem"), addresses comma-separated (IPv6 has colons).
                sep = _LIST_SEPARATORS.get(name, os.pathsep)
                return tuple(p.strip() for p in value.split(sep) if p.strip())
            return tuple(str(v) for v in value)
        return str(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"setting {name!r}: cannot use {value!r}") from exc


def load_settings(
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    config_file: str | None = None,
) -> Settings:
    """Merge defaults < config file < environment < flags. Flags whose value is None are unset."""
    env = os.environ if environ is None else environ
    flags = {k: v for k, v in (flags or {}).items() if v is not None and v != ()}
    path = config_file or flags.pop("config", None) or env.get("NEBULA_CONFIG")
    merged: dict[str, Any] = {}
    known = {f.name: f.type for f in fields(Settings)}
    if path:
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {path} does not exist") from exc
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"config file {path}: {exc}") from exc
        for key, value in data.items():
            name = key.replace("-", "_")
            if name not in known:
                raise ConfigError(f"config file {path}: unknown setting {key!r}")
            merged[name] = value
    for name in known:
        value = env.get(f"NEBULA_{name.upper()}")
        if value is not None and value != "":
            merged[name] = value
    flags.pop("config", None)
    for name, value in flags.items():
        if name not in known:
            raise ConfigError(f"unknown setting {name!r}")
        merged[name] = value
    values = {name: _coerce(name, known[name], value) for name, value in merged.items()}
    if "db" in values:
        values["db"] = _normalize_db(values["db"])
    if values.get("omaha_prefix"):
        values["omaha_prefix"] = _normalize_prefix(values["omaha_prefix"])
    settings = Settings(**values)
    split_listen(settings.listen)  # fail early on a bad address
    if settings.admin_listen and split_listen(settings.admin_listen)[1] == settings.port:
        raise ConfigError("admin_listen needs a port of its own, not the one of listen")
    _check_ranges(settings)
    if settings.public_url and not settings.public_url.startswith(("http://", "https://")):
        raise ConfigError(
            f"public_url must start with http:// or https://, got {settings.public_url!r}"
        )
    return settings


_DB_HELP = "use sqlite:///PATH or postgresql://USER@HOST/DB"


def _normalize_db(raw: str) -> str:
    """Refuse a database URL of a kind Nebula cannot use, at load rather than at start; take
    `postgres://` (what many tools print) as `postgresql://`."""
    scheme, sep, rest = raw.partition("://")
    if not sep or not scheme:
        raise ConfigError(f"db: not a database URL: {raw!r}: {_DB_HELP}")
    base, plus, driver = scheme.partition("+")
    if base == "postgres":
        return f"postgresql{plus}{driver}://{rest}"
    if base not in ("sqlite", "postgresql"):
        raise ConfigError(f"unsupported database URL scheme {base!r}: {_DB_HELP}")
    return raw


# What a path prefix may hold: URL path characters that need no escaping, no dot segments.
_PREFIX_SEGMENT = re.compile(r"[A-Za-z0-9_~-][A-Za-z0-9._~-]*")


def _normalize_prefix(raw: str) -> str:
    """'s3cr3t/', '/s3cr3t' -> '/s3cr3t': one leading slash, none at the end. Segments of
    unreserved URL characters only, so that the prefix is the same string in a route, in a
    codebase URL and in update.conf."""
    segments = [p for p in raw.strip().strip("/").split("/")]
    if not segments or not all(_PREFIX_SEGMENT.fullmatch(p) for p in segments):
        raise ConfigError(
            f"omaha_prefix must be path segments of letters, digits and ._~- "
            f"(e.g. /s3cr3t), got {raw!r}"
        )
    prefix = "/" + "/".join(segments)
    if prefix.split("/")[1] in ("v1", "api", "metrics", "healthz", "readyz"):
        raise ConfigError(f"omaha_prefix {prefix!r} would shadow one of Nebula's own paths")
    return prefix


LOG_LEVELS = ("debug", "info", "warning", "error")
RETENTIONS = ("event_retention", "grant_retention", "failure_retention", "activity_retention")
LOG_FORMATS = ("text", "json")


def _check_ranges(settings: Settings) -> None:
    """Refuse at load what would otherwise fail later: on every update check (a negative
    poll_interval makes every answer unbuildable), at logging set-up, or in the pool."""
    if settings.poll_interval < 0:
        raise ConfigError(
            f"poll_interval must be 0 (unset) or seconds > 0, got {settings.poll_interval}"
        )
    for name in RETENTIONS:
        if value := getattr(settings, name):
            try:
                parse_duration(value)
            except ValueError as exc:
                raise ConfigError(f"{name}: {exc}") from None
    if settings.history_interval <= 0 or 3600 % settings.history_interval:
        raise ConfigError(
            f"history_interval must divide an hour (e.g. 60, 300, 900), got "
            f"{settings.history_interval}"
        )
    try:
        parse_duration(settings.history_retention)
    except ValueError as exc:
        raise ConfigError(f"history_retention: {exc}") from None
    if settings.sweep_interval <= 0:
        raise ConfigError(f"sweep_interval must be seconds > 0, got {settings.sweep_interval}")
    if settings.cache_ttl < 0:
        raise ConfigError(f"cache_ttl must be seconds >= 0, got {settings.cache_ttl}")
    if not 0 < settings.checkin_interval <= 60:
        raise ConfigError(
            f"checkin_interval must be seconds in (0, 60], got {settings.checkin_interval}"
        )
    if settings.host_cache_size < 0:
        raise ConfigError(f"host_cache_size must be 0 or more, got {settings.host_cache_size}")
    if settings.workers < 0:
        raise ConfigError(f"workers must be 0 (one per CPU) or more, got {settings.workers}")
    if settings.workers > 1 and settings.is_sqlite:
        raise ConfigError(
            f"workers: SQLite has one writer, so it is served by 1 worker, not "
            f"{settings.workers}: run --workers 1, or use PostgreSQL for more"
        )
    if settings.shutdown_timeout < 0:
        raise ConfigError(f"shutdown_timeout must be seconds >= 0, got {settings.shutdown_timeout}")
    for name in ("header_timeout", "body_timeout"):
        if not getattr(settings, name) > 0:
            raise ConfigError(f"{name} must be seconds > 0, got {getattr(settings, name)}")
    if settings.max_header_bytes < 1024:
        raise ConfigError(
            f"max_header_bytes must be at least 1024, got {settings.max_header_bytes}"
        )
    if settings.auth_failure_limit < 0:
        raise ConfigError(
            f"auth_failure_limit must be 0 (no limit) or more, got {settings.auth_failure_limit}"
        )
    if not settings.auth_failure_window > 0:
        raise ConfigError(
            f"auth_failure_window must be seconds > 0, got {settings.auth_failure_window}"
        )
    if settings.db_pool_size < 1:
        raise ConfigError(f"db_pool_size must be at least 1, got {settings.db_pool_size}")
    for proxy in settings.trusted_proxy:
        try:
            ipaddress.ip_network(proxy, strict=False)
        except ValueError:
            raise ConfigError(f"trusted_proxy: {proxy!r} is not an address or CIDR") from None
    if bool(settings.tls_cert) != bool(settings.tls_key):
        raise ConfigError("tls_cert and tls_key go together: set both (or neither)")
    if settings.log_level.lower() not in LOG_LEVELS:
        raise ConfigError(
            f"log_level must be one of {', '.join(LOG_LEVELS)}, got {settings.log_level!r}"
        )
    if settings.log_format not in LOG_FORMATS:
        raise ConfigError(
            f"log_format must be one of {', '.join(LOG_FORMATS)}, got {settings.log_format!r}"
        )


def client_env(environ: Mapping[str, str] | None = None) -> tuple[str | None, str | None]:
    """NEBULA_URL and NEBULA_TOKEN for the CLI's API client."""
    env = os.environ if environ is None else environ
    return env.get("NEBULA_URL"), env.get("NEBULA_TOKEN")


def server_env_given(environ: Mapping[str, str] | None = None) -> bool:
    """Whether NEBULA_DB or NEBULA_CONFIG is set: `nebula token` then works on the database."""
    env = os.environ if environ is None else environ
    return bool(env.get("NEBULA_DB") or env.get("NEBULA_CONFIG"))


def cli_config_path(environ: Mapping[str, str] | None = None) -> Path:
    """Where the CLI keeps its named contexts (server URL and token each): NEBULA_CLI_CONFIG,
    else $XDG_CONFIG_HOME/nebula/config.toml, else ~/.config/nebula/config.toml."""
    env = os.environ if environ is None else environ
    if env.get("NEBULA_CLI_CONFIG"):
        return Path(env["NEBULA_CLI_CONFIG"])
    base = Path(env["XDG_CONFIG_HOME"]) if env.get("XDG_CONFIG_HOME") else None
    return (base or Path(env.get("HOME") or Path.home()) / ".config") / "nebula" / "config.toml"


def cli_context(environ: Mapping[str, str] | None = None) -> str | None:
    """NEBULA_CONTEXT: the context to use instead of the current one."""
    env = os.environ if environ is None else environ
    return env.get("NEBULA_CONTEXT") or None


def child_environ(extra: Mapping[str, str]) -> dict[str, str]:
    """The environment of a worker process: this one plus `extra`."""
    return {**os.environ, **extra}
