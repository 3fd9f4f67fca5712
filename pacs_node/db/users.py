"""Console accounts: users with argon2 password hashes, API tokens kept as SHA-256, the signing key."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Engine, insert, select, update
from sqlalchemy.exc import IntegrityError

from pacs_node.db.models import ApiToken, ConsoleKey, Role, User, utcnow

NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
MIN_PASSWORD = 10
#: Tokens start with this, so a leaked one is recognisable in a scan of logs or repositories.
TOKEN_PREFIX = "pnt_"

_hasher = PasswordHasher()
#: Verified against when the user does not exist, so a login takes as long either way.
_DUMMY_HASH = _hasher.hash("not a password of anyone")


class UserError(ValueError):
    """A user command cannot be done; the message says why."""


@dataclass(frozen=True)
class Account:
    """A user as the console sees it (never the hash)."""

    id: int
    name: str
    role: Role
    disabled: bool


def _account(row) -> Account:  # noqa: ANN001 - a Row of users
    return Account(row.id, row.name, Role(row.role), row.disabled_at is not None)


def add_user(engine: Engine, name: str, role: Role, password: str) -> Account:
    """Create a user; :class:`UserError` for a bad name, a short password or a taken name."""
    if not NAME_PATTERN.match(name):
        raise UserError("user names are 1-64 letters, digits and _ . @ -")
    if len(password) < MIN_PASSWORD:
        raise UserError(f"passwords need at least {MIN_PASSWORD} characters")
    try:
        with engine.begin() as connection:
            pk = connection.execute(
                insert(User).values(name=name, role=role, password_hash=_hasher.hash(password), created_at=utcnow())
                .returning(User.id)
            ).scalar_one()
    except IntegrityError as exc:
        raise UserError(f"user {name!r} exists already") from exc
    return Account(pk, name, role, False)


def list_users(engine: Engine) -> list[Account]:
    """Every user, by name."""
    with engine.connect() as connection:
        return [_account(row) for row in connection.execute(select(User).order_by(User.name)).all()]


def disable_user(engine: Engine, name: str) -> None:
    """Refuse the user's logins, sessions and tokens from now on."""
    with engine.begin() as connection:
        changed = connection.execute(
            update(User).where(User.name == name, User.disabled_at.is_(None)).values(disabled_at=utcnow())
        ).rowcount
    if not changed and find_user(engine, name) is None:
        raise UserError(f"no user {name!r}")


def find_user(engine: Engine, name: str) -> Account | None:
    """The user called ``name``, disabled or not."""
    with engine.connect() as connection:
        row = connection.execute(select(User).where(User.name == name)).first()
    return None if row is None else _account(row)


def user_by_id(engine: Engine, pk: int) -> Account | None:
    """An enabled user by id (sessions carry the id)."""
    with engine.connect() as connection:
        row = connection.execute(select(User).where(User.id == pk, User.disabled_at.is_(None))).first()
    return None if row is None else _account(row)


def authenticate(engine: Engine, name: str, password: str) -> Account | None:
    """The enabled user whose password this is, else ``None`` (taking as long either way)."""
    with engine.connect() as connection:
        row = connection.execute(select(User).where(User.name == name)).first()
    try:
        _hasher.verify(row.password_hash if row is not None else _DUMMY_HASH, password)
    except (VerificationError, InvalidHashError):
        return None
    if row is None or row.disabled_at is not None:
        return None
    return _account(row)


def _token_hash(token: str) -> str:
    # Tokens are 256 random bits: a plain hash is enough and keeps each API call cheap.
    return hashlib.sha256(token.encode()).hexdigest()


def issue_token(engine: Engine, name: str) -> str:
    """A new API token for an enabled user; only its hash is stored, so it is shown once."""
    account = find_user(engine, name)
    if account is None or account.disabled:
        raise UserError(f"no enabled user {name!r}")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with engine.begin() as connection:
        connection.execute(insert(ApiToken).values(user_pk=account.id, token_hash=_token_hash(token),
                                                   created_at=utcnow()))
    return token


def user_for_token(engine: Engine, token: str) -> Account | None:
    """The enabled user an API token belongs to (and note its use), else ``None``."""
    digest = _token_hash(token)
    with engine.connect() as connection:
        row = connection.execute(
            select(User.id, User.name, User.role, User.disabled_at, ApiToken.last_used_at)
            .join(ApiToken, ApiToken.user_pk == User.id)
            .where(ApiToken.token_hash == digest, User.disabled_at.is_(None))
        ).first()
    if row is None:
        return None
    now = utcnow()
    if row.last_used_at is None or now - row.last_used_at > dt.timedelta(minutes=1):  # a write a minute at most
        with engine.begin() as connection:
            connection.execute(update(ApiToken).where(ApiToken.token_hash == digest).values(last_used_at=now))
    return _account(row)


def console_key(engine: Engine, name: str = "session") -> str:
    """The named secret, generated on first use and the same for every process sharing the database."""
    with engine.connect() as connection:
        value = connection.scalar(select(ConsoleKey.value).where(ConsoleKey.name == name))
    if value is not None:
        return value
    try:
        with engine.begin() as connection:
            connection.execute(insert(ConsoleKey).values(name=name, value=secrets.token_urlsafe(48), created_at=utcnow()))
    except IntegrityError:
        pass  # another process made it first; use theirs
    with engine.connect() as connection:
        return connection.scalar(select(ConsoleKey.value).where(ConsoleKey.name == name))
