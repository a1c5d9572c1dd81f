"""The few statements that differ between SQLite and PostgreSQL, in one place."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Table
from sqlalchemy.dialects import postgresql, sqlite


def insert_ignoring_conflicts(conn: Connection, table: Table, rows: list[dict[str, Any]], *keys: str) -> None:
    """Insert rows, silently skipping those whose unique ``keys`` already exist."""
    if not rows:
        return
    module = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = module.insert(table).on_conflict_do_nothing(index_elements=list(keys))
    conn.execute(stmt, rows)


def insert_returning_new(
    conn: Connection, table: Table, rows: list[dict[str, Any]], returned: str, *keys: str
) -> list[Any]:
    """Insert rows, skipping those whose unique ``keys`` exist; returns ``returned`` of the rows inserted."""
    if not rows:
        return []
    module = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = module.insert(table).on_conflict_do_nothing(index_elements=list(keys)).returning(table.c[returned])
    return [value for (value,) in conn.execute(stmt, rows)]


def upsert(conn: Connection, table: Table, rows: list[dict[str, Any]], key: str, update: list[str]) -> None:
    """Insert rows, or update the ``update`` columns of the row with the same ``key``."""
    if not rows:
        return
    module = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = module.insert(table)
    stmt = stmt.on_conflict_do_update(
        index_elements=[key], set_={column: getattr(stmt.excluded, column) for column in update}
    )
    conn.execute(stmt, rows)
