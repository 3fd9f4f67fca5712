"""The console's tables: users, their API tokens, the audit log, the console's own keys."""

from __future__ import annotations

import datetime as dt
import enum

from sqlalchemy import ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from pacs_node.db.models.core import Base, _enum, utcnow


class Role(enum.StrEnum):
    """What a console user may do: viewers see state and numbers, admins also act."""

    VIEWER = "viewer"
    ADMIN = "admin"


class User(Base):
    """A console login."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[Role] = mapped_column(_enum(Role))
    #: argon2id hash (PHC string) of the password.
    password_hash: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    disabled_at: Mapped[dt.datetime | None] = mapped_column(default=None)


class ApiToken(Base):
    """A bearer token of a user for the REST API; only its SHA-256 is kept."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_pk: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[dt.datetime | None] = mapped_column(default=None)


class AuditEntry(Base):
    """One thing a person did (or tried) through the console or the user commands."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
    #: The user name (or the name tried, for a refused login), or "cli".
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(32))
    #: What was acted on, by internal id (never a patient identifier), e.g. "study 12".
    target: Mapped[str] = mapped_column(String(128), default="")
    #: "ok", "refused", "failed" or "denied".
    outcome: Mapped[str] = mapped_column(String(16))
    detail: Mapped[str] = mapped_column(Text, default="")


class ConsoleKey(Base):
    """A secret the console generated once (the session cookie's signing key)."""

    __tablename__ = "console_keys"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
