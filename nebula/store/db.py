"""Engine and session set-up, and schema migration, for SQLite (aiosqlite) and PostgreSQL (asyncpg).

Imports only nebula.store.models, nebula.errors and nebula.policy (pure: SQLite is given its
rollout key function, which PostgreSQL computes with its own sha256()). `postgresql://` (or
`postgres://`) and `sqlite:///` URLs are accepted as written and given their async driver;
`check_connection` turns a database that cannot be reached into one line. SQLite runs in WAL mode
with foreign keys on, and every writing transaction starts with BEGIN IMMEDIATE: writers queue
on SQLite's lock instead of failing on a lock upgrade, which also makes limits exact within one
process. Sessions made with read_only=True begin plain (deferred) transactions, which WAL never
blocks.
"""

from __future__ import annotations

import asyncio
import importlib.util
import socket
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, DisconnectionError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from nebula.errors import ConfigError, DatabaseUnavailableError
from nebula.policy import rollout_key_hex

# Any constant works; it only has to be the same for every Nebula process on one database.
_MIGRATION_LOCK_KEY = 0x4E45_4255  # "NEBU"


T = TypeVar("T")

_SCHEMES_HELP = "use sqlite:///PATH or postgresql://USER@HOST/DB"


def normalize_url(raw: str) -> URL:
    """Give plain database URLs their async driver; refuse anything else. `postgres://` (what
    many tools print) is taken as `postgresql://`."""
    try:
        url = make_url(raw)
    except ArgumentError as exc:
        raise ConfigError(f"not a database URL: {raw!r}: {_SCHEMES_HELP}") from exc
    backend = url.get_backend_name()
    if backend == "sqlite":
        return url.set(drivername="sqlite+aiosqlite")
    if backend in ("postgresql", "postgres"):
        return url.set(drivername="postgresql+asyncpg")
    raise ConfigError(f"unsupported database URL scheme {backend!r}: {_SCHEMES_HELP}")


def safe_url(raw: str) -> str:
    """The URL as an operator may see it: plain scheme, password hidden."""
    try:
        url = normalize_url(raw)
    except ConfigError:
        return "?"
    plain = url.set(drivername=url.get_backend_name())
    return plain.render_as_string(hide_password=True)


def is_sqlite(engine: AsyncEngine) -> bool:
    return engine.dialect.name == "sqlite"


def sqlite_path(raw: str) -> Path | None:
    """The file of a SQLite URL (None for other databases and for :memory:)."""
    url = normalize_url(raw)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return Path(url.database)


def create_engine(raw_url: str, pool_size: int = 10) -> AsyncEngine:
    url = normalize_url(raw_url)
    if url.get_backend_name() == "sqlite":
        path = sqlite_path(raw_url)
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise DatabaseUnavailableError(
                    f"cannot open database {safe_url(raw_url)}: "
                    f"{path.parent}: {exc.strerror or exc}"
                ) from None
        engine = create_async_engine(url, connect_args={"timeout": 30})
        _tune_sqlite(engine)
        return engine
    engine = create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_recycle=1800,
        # asyncpg waits 60 s by default for a server that does not answer.
        connect_args={"timeout": _CONNECT_TIMEOUT},
    )
    _ping_when_idle(engine)
    return engine


# A pooled connection unused for this long is pinged before it is handed out.
PING_IDLE_SECONDS = 2.0


def _ping_when_idle(engine: AsyncEngine) -> None:
    """Check a connection on checkout without a round trip, and ping it only when it sat unused
    in the pool: pool_pre_ping pings on every checkout, a round trip per transaction that was
    a tenth of a grant's time. A connection that dies while in use (or unseen) fails its
    statement; the Omaha service's transactions then run once more on a fresh one
    (`is_disconnect`), and SQLAlchemy replaces every connection of the pool after the first
    one found dead."""

    @event.listens_for(engine.sync_engine.pool, "checkin")
    def _on_checkin(_dbapi_conn: Any, record: Any) -> None:
        if record is not None:
            record.info["nebula_idle_since"] = time.monotonic()

    @event.listens_for(engine.sync_engine.pool, "checkout")
    def _on_checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        # A connection the server closed (terminated, restarted) is known to asyncpg as soon
        # as the event loop read the end of its socket: no round trip needed to see it.
        is_closed = getattr(record.driver_connection, "is_closed", None)
        if is_closed is not None and is_closed():
            raise DisconnectionError("pooled connection was closed by the server")
        since = record.info.get("nebula_idle_since")
        if since is None or time.monotonic() - since < PING_IDLE_SECONDS:
            return
        try:
            engine.dialect.do_ping(dbapi_conn)
        except Exception as exc:
            # The pool drops this connection and checks out another (or connects anew).
            raise DisconnectionError(f"pooled connection is gone: {exc}") from exc


def is_disconnect(exc: BaseException) -> bool:
    """Whether `exc` says the database connection was lost (the pool has dropped it)."""
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


# What PostgreSQL rolls back whole and a second run may well pass: a deadlock's victim and a
# serialization failure. Nothing of the failed transaction was written.
_RETRYABLE_SQLSTATES = frozenset({"40P01", "40001"})


def is_rolled_back_conflict(exc: BaseException) -> bool:
    """Whether `exc` is a deadlock or serialization failure (the transaction was rolled back)."""
    if not isinstance(exc, DBAPIError):
        return False
    orig = exc.orig
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return code in _RETRYABLE_SQLSTATES


async def run_again_if_lost(work: Callable[[], Awaitable[T]]) -> T:
    """Run `work`, and once more (on a fresh connection) when the connection it used turned
    out to be gone, or PostgreSQL rolled it back whole (a deadlock's victim, a serialization
    failure). Only for work a second run cannot double: a read, or one guarded statement in
    autocommit whose second run writes nothing if the first committed (a host's first check,
    a known host's grant). Not for a transaction of several statements: a connection lost
    during its COMMIT may have committed it, which the caller must tell apart itself."""
    try:
        return await work()
    except DBAPIError as exc:
        if not (is_disconnect(exc) or is_rolled_back_conflict(exc)):
            raise
        return await work()


_CONNECT_TIMEOUT = 10.0


async def check_connection(engine: AsyncEngine) -> None:
    """Connect once; DatabaseUnavailableError, in one line, if that fails (server down, no
    such database, refused credentials, an unreadable file). What runs at start calls this
    first, so that an operator's mistake is a sentence rather than a traceback."""
    try:
        async with engine.connect() as conn:
            await conn.exec_driver_sql("SELECT 1")
    except Exception as exc:
        where = safe_url(engine.url.render_as_string(hide_password=False))
        raise DatabaseUnavailableError(
            f"cannot connect to database {where}: {describe_connect_error(exc)}"
        ) from None


def describe_connect_error(exc: BaseException) -> str:
    """What went wrong connecting, as a short phrase (the driver's message where it has one)."""
    orig = getattr(exc, "orig", None)  # SQLAlchemy's DBAPIError wraps the driver's error
    if isinstance(orig, BaseException):
        exc = orig
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is the database server running, on that host and port?)"
    if isinstance(exc, socket.gaierror):
        return f"unknown host ({exc.strerror})"
    if isinstance(exc, TimeoutError):
        return f"no answer within {_CONNECT_TIMEOUT:.0f} s"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _tune_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control from the driver so that we can say BEGIN IMMEDIATE ourselves.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()
        # Rollout status counts a group's hosts inside its staged percentage in SQL.
        dbapi_conn.create_function("nebula_rollout_key", 2, rollout_key_hex, deterministic=True)

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Readers never block in WAL mode, so only writers need the lock up front.
        read_only = conn.get_execution_options().get("nebula_read_only", False)
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


def session_factory(
    engine: AsyncEngine, *, read_only: bool = False
) -> async_sessionmaker[AsyncSession]:
    """Sessions on `engine`; read_only ones begin deferred transactions on SQLite (see above)."""
    if read_only:
        engine = engine.execution_options(nebula_read_only=True)
    return async_sessionmaker(engine, expire_on_commit=False)


# SQLite writers of one process queue here rather than in SQLite's busy handler, which sleeps
# in growing steps and made the tail latency of concurrent checks about a second.
_SQLITE_WRITERS: weakref.WeakKeyDictionary[Any, asyncio.Lock] = weakref.WeakKeyDictionary()


def _writer_lock(sessions: async_sessionmaker[AsyncSession]) -> asyncio.Lock | None:
    bind = sessions.kw.get("bind")
    if not isinstance(bind, AsyncEngine) or bind.dialect.name != "sqlite":
        return None
    if bind.get_execution_options().get("nebula_read_only", False):
        return None
    pool = bind.sync_engine.pool  # shared by the engine and its read-only view
    lock = _SQLITE_WRITERS.get(pool)
    if lock is None:
        lock = _SQLITE_WRITERS[pool] = asyncio.Lock()
    return lock


# Transactions of this process waiting for a connection of each pool (for /metrics): the pool
# itself does not tell.
_WAITING: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()


@asynccontextmanager
async def _checkout(bind: AsyncEngine) -> AsyncIterator[None]:
    """Counts the caller as waiting for a connection of `bind`'s pool while inside."""
    pool = bind.sync_engine.pool
    _WAITING[pool] = _WAITING.get(pool, 0) + 1
    try:
        yield
    finally:
        _WAITING[pool] -= 1


def pool_usage(engine: AsyncEngine) -> tuple[int, int]:
    """(connections checked out, transactions waiting for one) of `engine`'s pool in this
    process."""
    pool = engine.sync_engine.pool
    checkedout = getattr(pool, "checkedout", None)
    return (int(checkedout()) if callable(checkedout) else 0), _WAITING.get(pool, 0)


@asynccontextmanager
async def transaction(
    sessions: async_sessionmaker[AsyncSession],
) -> AsyncIterator[AsyncSession]:
    """One unit of work: commit on success, roll back on any exception. Its connection is taken
    at the start (the first statement would take it anyway), so that a wait for one is seen."""
    lock = _writer_lock(sessions)
    bind = sessions.kw.get("bind")
    if lock is None:
        async with sessions() as session, session.begin():
            if isinstance(bind, AsyncEngine):
                async with _checkout(bind):
                    await session.connection()
            yield session
        return
    async with lock, sessions() as session, session.begin():
        if isinstance(bind, AsyncEngine):
            async with _checkout(bind):
                await session.connection()
        yield session


# Views of an engine with other execution options, one per engine and options: making one
# (`execution_options()`) builds an engine object and registers event listeners on it, a quarter
# of the CPU a one-statement grant cost when it was done for every statement.
_VIEWS: weakref.WeakKeyDictionary[Any, dict[tuple[tuple[str, Any], ...], AsyncEngine]] = (
    weakref.WeakKeyDictionary()
)


def engine_view(engine: AsyncEngine, **options: Any) -> AsyncEngine:
    """`engine.execution_options(**options)`, made once and kept while the engine lives. The
    view shares the engine's pool."""
    views = _VIEWS.setdefault(engine.sync_engine, {})
    key = tuple(sorted(options.items()))
    view = views.get(key)
    if view is None:
        view = views[key] = engine.execution_options(**options)
    return view


@asynccontextmanager
async def point_read(
    sessions: async_sessionmaker[AsyncSession],
) -> AsyncIterator[AsyncConnection]:
    """A connection for one read statement outside any transaction. On PostgreSQL it runs in
    autocommit, a statement being its own snapshot: no BEGIN and COMMIT round trips around a
    read that the hot path makes for every host it has no snapshot of. On SQLite it is a
    deferred (read-only) transaction, which WAL never blocks. Only for single statements:
    several reads that must agree with each other need `transaction`."""
    bind = sessions.kw.get("bind")
    if not isinstance(bind, AsyncEngine):
        raise TypeError("point_read needs sessions bound to an engine")
    engine = bind
    if bind.dialect.name == "postgresql":
        bind = engine_view(bind, isolation_level="AUTOCOMMIT")
    else:
        bind = engine_view(bind, nebula_read_only=True)
    async with _checkout(engine):
        conn = await bind.connect()
    try:
        yield conn
    finally:
        await conn.close()


@asynccontextmanager
async def single_statement(
    sessions: async_sessionmaker[AsyncSession],
) -> AsyncIterator[AsyncConnection]:
    """A PostgreSQL connection in autocommit for one writing statement that is its own
    transaction: no BEGIN and COMMIT round trips, and the row locks it takes are held for the
    statement alone, not until the client's next round trip."""
    bind = sessions.kw.get("bind")
    if not isinstance(bind, AsyncEngine) or bind.dialect.name != "postgresql":
        raise TypeError("single_statement needs sessions bound to a PostgreSQL engine")
    async with _checkout(bind):
        conn = await engine_view(bind, isolation_level="AUTOCOMMIT").connect()
    try:
        yield conn
    finally:
        await conn.close()


def _alembic_config() -> Config:
    # The migrations ship inside the package as nebula._migrations (see pyproject.toml).
    spec = importlib.util.find_spec("nebula._migrations")
    if spec is None or spec.origin is None:
        raise ConfigError("Nebula's migrations are missing from this installation")
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(spec.origin).parent))
    return cfg


def head_revision() -> str | None:
    return ScriptDirectory.from_config(_alembic_config()).get_current_head()


async def current_revision(engine: AsyncEngine) -> str | None:
    def _current(conn: Connection) -> str | None:
        return MigrationContext.configure(conn).get_current_revision()

    async with engine.connect() as conn:
        return await conn.run_sync(_current)


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Migrate the schema. Safe when several replicas start at once on one PostgreSQL."""
    cfg = _alembic_config()

    def _run(conn: Connection) -> None:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)

    async with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            # Transaction-scoped: released at commit, so a crashed migrator holds nothing.
            await conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK_KEY})")
        await conn.run_sync(_run)


async def downgrade(engine: AsyncEngine, revision: str) -> None:
    cfg = _alembic_config()

    def _run(conn: Connection) -> None:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)

    async with engine.begin() as conn:
        await conn.run_sync(_run)
