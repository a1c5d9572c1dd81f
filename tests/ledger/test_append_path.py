"""The ledger has one append path: every writer goes through ``worker.store.ledger.append``.

The verifiable ledger sequences and hashes rows in that one function, so a second INSERT
anywhere in the engine would write rows the proofs never see.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from worker.core.errors import PermanentDeliveryError
from worker.core.messages import DeliveryKey, Receipt
from worker.core.statuses import DeliveryStatus, RouteMark
from worker.store.deliveries import open_deliveries, record
from worker.store.engine import make_engine
from worker.store.ledger import Entry, Note, append, note
from worker.store.schema import ledger

ENGINE_ROOT = Path(__file__).resolve().parents[2] / "worker"
APPEND_MODULE = ENGINE_ROOT / "store" / "ledger.py"


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    eng = make_engine(database_url)
    yield eng
    eng.dispose()


def _writes_to_ledger(tree: ast.AST) -> list[int]:
    """Lines that call ``ledger.insert()/update()/delete()`` or ``insert(ledger)`` and the like."""
    lines = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if (
            isinstance(func, ast.Attribute)
            and func.attr in {"insert", "update", "delete"}
            and isinstance(func.value, ast.Name)
            and func.value.id == "ledger"
        ) or (
            isinstance(func, ast.Name)
            and func.id in {"insert", "update", "delete"}
            and any(isinstance(arg, ast.Name) and arg.id == "ledger" for arg in node.args)
        ):
            lines.append(node.lineno)
    return lines


def test_no_engine_module_but_the_ledger_writes_ledger_rows() -> None:
    offenders = []
    for path in sorted(ENGINE_ROOT.rglob("*.py")):
        if path == APPEND_MODULE or "migrations" in path.parts:
            continue
        offenders += [
            f"{path.relative_to(ENGINE_ROOT.parent)}:{line}" for line in _writes_to_ledger(ast.parse(path.read_text()))
        ]
    assert offenders == [], f"ledger rows written outside worker/store/ledger.py: {offenders}"


def test_the_append_module_itself_writes_only_inserts() -> None:
    tree = ast.parse(APPEND_MODULE.read_text())
    calls = {
        node.func.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "ledger"
    }
    assert calls == {"insert"}


def test_an_entry_states_every_column_but_the_id_and_the_time() -> None:
    columns = {c.name for c in ledger.columns} - {"id", "recorded_at"}
    assert set(Entry.__dataclass_fields__) == columns


def test_append_keeps_the_order_given_and_stamps_one_time(engine: Engine) -> None:
    at = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
    entries = [Entry("evt-a", f"r{i}", "email", 0, DeliveryStatus.SENT.value, attempt=1, tries=1) for i in (3, 1, 2)]
    with engine.begin() as conn:
        append(conn, entries, at=at)
        append(conn, [])
        rows = conn.execute(select(ledger.c.recipient_ref, ledger.c.recorded_at).order_by(ledger.c.id)).all()
    assert [ref for ref, _ in rows] == ["r3", "r1", "r2"]
    assert {stamp.replace(tzinfo=UTC) if stamp.tzinfo is None else stamp for _, stamp in rows} == {at}


def test_attempts_moves_and_notes_all_arrive_as_entries(engine: Engine) -> None:
    key = DeliveryKey("evt-b", "r1", "email", 0)
    with engine.begin() as conn:
        open_deliveries(
            conn, "evt-b", "email", ["r1", "r2"], failures={"r2": PermanentDeliveryError("no email", code="no-contact")}
        )
        record(conn, [Receipt(key, DeliveryStatus.DELIVERED, provider_message_id="m1")], attempts={"r1": 1})
        note(conn, [Note("evt-b", "r1", "email", 0, RouteMark.FALLBACK, "next stage")])
        rows = conn.execute(
            select(ledger.c.recipient_ref, ledger.c.status, ledger.c.error_code, ledger.c.provider_message_id).order_by(
                ledger.c.id
            )
        ).all()
    assert [tuple(r) for r in rows] == [
        ("r2", "failed", "no-contact", None),
        ("r1", "delivered", None, "m1"),
        ("r1", RouteMark.FALLBACK.value, None, None),
    ]
