"""Engine and session factory, and schema migration to the current revision."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

_MIGRATIONS = Path(__file__).parent / "migrations"


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # noqa: ANN001 - DB-API objects
    cursor = dbapi_connection.cursor()
    # WAL lets readers work beside the receiver; FULL makes every commit durable when it
    # returns (the receiver's batch connection opts out: see unsynced_commits).
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def make_engine(url: str) -> Engine:
    """Create the engine for ``url`` (SQLite file or PostgreSQL), tuned for the node.

    SQLite files get WAL, full synchronous commits and a busy timeout; their parent
    directory is created.
    """
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, pool_size=32)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_size=20, max_overflow=20, pool_pre_ping=True)


def unsynced_commits(connection: Connection) -> Path | None:
    """Let ``connection``'s commits skip their fsync where the database allows it safely.

    On a SQLite file in WAL mode the connection is taken out of the pool and set to
    ``synchronous=NORMAL``: a commit is written to the write-ahead log, visible to every
    other connection and kept if the process dies, but durable only once the log is
    fsynced.  Returns that log (``<database>-wal``) to fsync, or ``None`` when commits
    stay durable by themselves (PostgreSQL, SQLite in another journal mode, in memory).
    """
    if connection.dialect.name != "sqlite":
        return None
    cursor = connection.connection.dbapi_connection.cursor()
    try:
        mode = cursor.execute("PRAGMA journal_mode").fetchone()[0]
        files = {row[1]: row[2] for row in cursor.execute("PRAGMA database_list").fetchall()}
        if str(mode).lower() != "wal" or not files.get("main"):
            return None
        connection.detach()  # closed, never handed to another user, with synchronous=NORMAL
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()
    return Path(files["main"] + "-wal")


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded objects usable after commit."""
    return sessionmaker(engine, expire_on_commit=False)


def alembic_config(url: str) -> AlembicConfig:
    """Alembic configuration pointing at the bundled migrations and ``url``."""
    config = AlembicConfig()
    config.set_main_option("script_location", str(_MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(engine: Engine) -> None:
    """Bring the schema to the newest migration (idempotent)."""
    config = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
