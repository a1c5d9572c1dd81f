"""One SQLAlchemy engine per database URL, tuned for SQLite and PostgreSQL alike, and migrations.

SQLite is used by several worker processes at once, so every transaction starts with
``BEGIN IMMEDIATE`` (a writer waits for the lock up front instead of failing on upgrade)
and the file runs in WAL mode with a generous busy timeout.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url

from worker.core.errors import ConfigurationError

#: Execution option marking a connection that only reads (SQLite then takes no write lock).
READ_ONLY = "herald_read_only"

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def make_engine(url: str) -> Engine:
    """Create an engine for ``url`` with the settings herald relies on.

    A statement's parameters (an event's body, a person's contacts) never appear in the text
    of a database error, which ends up in logs.

    Raises:
        ConfigurationError: the URL cannot be parsed or names no installed driver.
    """
    try:
        parsed = make_url(url)
    except Exception as exc:  # sqlalchemy raises ArgumentError with the bad URL in it
        raise ConfigurationError(f"HERALD_DATABASE_URL is not a database URL: {exc}") from None
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(parsed, connect_args={"timeout": 60}, pool_size=8, max_overflow=8, hide_parameters=True)
        _tune_sqlite(engine)
        return engine
    try:
        return create_engine(parsed, pool_size=5, max_overflow=10, pool_pre_ping=True, hide_parameters=True)
    except ModuleNotFoundError as exc:
        raise ConfigurationError(f"no database driver for {parsed.drivername}: {exc}") from None


def _tune_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not pysqlite, decide when transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=60000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # Writers take the lock up front; a reader marked read-only must not block them.
        readonly = connection.get_execution_options().get(READ_ONLY, False)
        connection.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")


def is_sqlite(engine: Engine) -> bool:
    """Whether the engine talks to SQLite (some statements differ)."""
    return engine.dialect.name == "sqlite"


def _alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["engine"] = engine
    return config


@contextmanager
def _migration_lock(engine: Engine) -> Iterator[None]:
    """Serialise migrations between processes: an advisory lock on PostgreSQL, a file lock on SQLite."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(7391201)"))
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(7391201)"))
                conn.commit()
        return
    database = engine.url.database
    if engine.dialect.name == "sqlite" and database and database != ":memory:":
        with open(f"{database}.migrate.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        return
    yield


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision; safe to call from many processes."""
    with _migration_lock(engine):
        command.upgrade(_alembic_config(engine), "head")


def schema_is_current(engine: Engine) -> bool:
    """Whether the database is at the newest revision (workers refuse to run otherwise)."""
    head = ScriptDirectory.from_config(_alembic_config(engine)).get_current_head()
    with engine.connect() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
    return current == head


def read_only(engine: Engine) -> Connection:
    """A connection for reads only; on SQLite it does not wait for, or hold, the write lock."""
    return engine.connect().execution_options(**{READ_ONLY: True})
