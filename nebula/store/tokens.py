"""Admin API tokens: made once, shown once, stored only as a SHA-256.

Tokens are 256 random bits, so a plain SHA-256 is enough to make a stolen database useless to
an attacker (no password-style stretching needed) and keeps the check cheap. The lookup is by
that hash through a unique index, so it takes the same time whatever the token's bytes.

`last_used_at` is kept to the minute, not per request: the check reads it with the token, and
only when it is a minute or more behind does `touch` write it (one conditional UPDATE that a
second process racing for the same minute turns into a no-op). An API busy with one token
costs one write a minute, not one per request.

Imports nebula.store and nebula.errors only.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from nebula.errors import ConflictError, InvalidInputError, NotFoundError
from nebula.store.models import ApiToken
from nebula.store.rollouts import log_activity

ROLES = ("admin", "viewer")
PREFIX = "nbl_"  # makes a leaked token easy to recognise (and to grep for) in logs and repos
TOUCH_EVERY = timedelta(minutes=1)  # how far last_used_at may lag behind the truth


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    role: str
    token_id: int | None = None
    last_used_at: datetime | None = None

    @property
    def can_write(self) -> bool:
        return self.role == "admin"

    def stale(self, now: datetime) -> bool:
        """Whether its last-used time is due to be written again."""
        return self.last_used_at is None or now - self.last_used_at >= TOUCH_EVERY


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_token_name(name: object) -> str:
    if not isinstance(name, str) or not name or len(name) > 100 or not name.isprintable():
        raise InvalidInputError("a token needs a name of 1 to 100 printable characters")
    if "/" in name:
        raise InvalidInputError("a token's name cannot have '/' in it (it is part of a URL)")
    return name


async def create_token(
    session: AsyncSession, name: str, role: str, now: datetime, actor: str | None = None
) -> str:
    """Store a new token and return it; it cannot be recovered later. With `actor`, the
    creation is written to the activity log under that name."""
    if role not in ROLES:
        raise InvalidInputError(f"role must be one of {', '.join(ROLES)}")
    check_token_name(name)
    exists = (await session.execute(select(ApiToken.id).where(ApiToken.name == name))).first()
    if exists is not None:
        raise ConflictError(f"a token named {name!r} exists already")
    token = PREFIX + secrets.token_urlsafe(32)
    session.add(ApiToken(name=name, role=role, token_hash=hash_token(token), created_at=now))
    await session.flush()
    if actor is not None:
        log_activity(
            session,
            now,
            actor,
            "token",
            f"token {name} ({role}) created",
            None,
            token=name,
            new={"role": role},
        )
    return token


async def authenticate(session: AsyncSession, token: str) -> Principal | None:
    stmt = select(ApiToken.id, ApiToken.name, ApiToken.role, ApiToken.last_used_at).where(
        ApiToken.token_hash == hash_token(token), ApiToken.revoked_at.is_(None)
    )
    row = (await session.execute(stmt)).first()
    if row is None:
        return None
    return Principal(row.name, row.role, row.id, row.last_used_at)


async def touch(session: AsyncSession, token_id: int, now: datetime) -> bool:
    """Move the token's last_used_at to `now` unless it is already within TOUCH_EVERY of it;
    whether this wrote."""
    result = await session.execute(
        update(ApiToken)
        .where(
            ApiToken.id == token_id,
            or_(ApiToken.last_used_at.is_(None), ApiToken.last_used_at <= now - TOUCH_EVERY),
        )
        .values(last_used_at=now)
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(result, "rowcount", 0))


async def list_tokens(session: AsyncSession) -> list[ApiToken]:
    return list((await session.execute(select(ApiToken).order_by(ApiToken.id))).scalars())


async def revoke_token(
    session: AsyncSession, name: str, now: datetime, actor: str | None = None
) -> bool:
    """Revoke the token named `name`; False if there is no such token or it was revoked
    already. With `actor`, the revocation is written to the activity log."""
    token = (
        await session.execute(select(ApiToken).where(ApiToken.name == name))
    ).scalar_one_or_none()
    if token is None or token.revoked_at is not None:
        return False
    token.revoked_at = now
    if actor is not None:
        log_activity(
            session,
            now,
            actor,
            "token",
            f"token {name} ({token.role}) revoked",
            None,
            token=name,
            old={"revoked_at": None},
            new={"revoked_at": now.isoformat()},
        )
    return True


async def revoke_named(session: AsyncSession, name: str, now: datetime, actor: str) -> ApiToken:
    """revoke_token for the API: NotFoundError for an unknown name, ConflictError for a token
    revoked already."""
    token = (
        await session.execute(select(ApiToken).where(ApiToken.name == name))
    ).scalar_one_or_none()
    if token is None:
        raise NotFoundError(f"no token named {name!r}")
    if token.revoked_at is not None:
        raise ConflictError(f"token {name!r} was revoked at {token.revoked_at.isoformat()}")
    await revoke_token(session, name, now, actor)
    return token
