"""Admin API tokens: made once, shown once, stored only as a SHA-256.

Tokens are 256 random bits, so a plain SHA-256 is enough to make a stolen database useless to
an attacker (no password-style stretching needed) and keeps the check cheap. Imports
nebula.store.models and nebula.errors.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from nebula.errors import ConflictError, InvalidInputError
from nebula.store.models import ApiToken

ROLES = ("admin", "viewer")
PREFIX = "nbl_"  # makes a leaked token easy to recognise (and to grep for) in logs and repos


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    role: str

    @property
    def can_write(self) -> bool:
        return self.role == "admin"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def create_token(session: AsyncSession, name: str, role: str, now: datetime) -> str:
    """Store a new token and return it; it cannot be recovered later."""
    if role not in ROLES:
        raise InvalidInputError(f"role must be one of {', '.join(ROLES)}")
    if not name or len(name) > 100:
        raise InvalidInputError("a token needs a name of 1 to 100 characters")
    exists = (await session.execute(select(ApiToken.id).where(ApiToken.name == name))).first()
    if exists is not None:
        raise ConflictError(f"a token named {name!r} exists already")
    token = PREFIX + secrets.token_urlsafe(32)
    session.add(ApiToken(name=name, role=role, token_hash=hash_token(token), created_at=now))
    await session.flush()
    return token


async def authenticate(session: AsyncSession, token: str) -> Principal | None:
    stmt = select(ApiToken.name, ApiToken.role).where(
        ApiToken.token_hash == hash_token(token), ApiToken.revoked_at.is_(None)
    )
    row = (await session.execute(stmt)).first()
    return Principal(row.name, row.role) if row is not None else None


async def list_tokens(session: AsyncSession) -> list[ApiToken]:
    return list((await session.execute(select(ApiToken).order_by(ApiToken.id))).scalars())


async def revoke_token(session: AsyncSession, name: str, now: datetime) -> bool:
    token = (
        await session.execute(select(ApiToken).where(ApiToken.name == name))
    ).scalar_one_or_none()
    if token is None or token.revoked_at is not None:
        return False
    token.revoked_at = now
    return True
