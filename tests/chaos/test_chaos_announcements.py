"""The announcement site's directory unwritable, then fixed, while people wait to be covered.

Processes run as root, so ``chmod`` cannot make a directory unwritable here; a regular file
where the site's directory should be is a real fault that root cannot write through either.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from faults import ONE_BACKEND, QUICK, ChaosRun, Received
from sqlalchemy import func, select
from support import every_type_at_once, incident, people, write_routing

from worker.config import Settings
from worker.sandbox.smtp_sink import SmtpSink
from worker.store.engine import read_only
from worker.store.schema import routes

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

REACHABLE = 150
UNREACHABLE = 150  # their email is refused for good: only the announcement can cover them


@pytest.mark.parametrize("database_url", [ONE_BACKEND], indirect=True)
def test_the_announcements_directory_unwritable_then_fixed_loses_nothing(
    chaos: Callable[[Settings], ChaosRun],
    make_settings: Callable[..., Settings],
    smtp_sink: SmtpSink,
    backend: str,
    tmp_path: Path,
) -> None:
    site = tmp_path / "site"
    site.write_text("a regular file where the announcement site's directory should be\n")
    smtp_sink.refuse(r"^gone\d+@", code=550, text="5.1.1 mailbox unavailable")
    settings = make_settings(
        **QUICK,
        channels=("email", "insite"),
        routing_file=write_routing(tmp_path, every_type_at_once("[email]")),
        announcements_dir=site,
    )
    run = chaos(settings)
    audience = people(REACHABLE, prefix="ok") + people(UNREACHABLE, prefix="gone")
    event_id = run.publish(incident(audience))
    run.start_workers(threads=3)
    run.wait_for(lambda: waiting(run, event_id) == UNREACHABLE, "everyone unreachable to wait for the announcement")
    time.sleep(3.0)  # publications are tried, retried and pushed on by the dead-man check meanwhile
    still_waiting = waiting(run, event_id)
    run.fault("announcements directory is a regular file", [event_id])
    site.unlink()  # fixed: the directory can be created again
    done = run.settle([event_id], 90.0)

    result = run.figures([event_id], expected=REACHABLE + UNREACHABLE, received=Received.of(smtp_sink))
    print(
        "\n"
        + result.line(
            "announcements-unwritable",
            backend,
            f"{UNREACHABLE} people waited on the announcement while its directory was a file, then it was removed",
        )
    )
    assert still_waiting == UNREACHABLE, "the announcement went up through a regular file?"
    assert done or result.lost, "not settled, yet nothing lost?"
    result.check()
    assert outcomes(run, event_id) == {"reached": REACHABLE, "covered": UNREACHABLE}
    assert (site / "en" / "index.html").is_file()


def waiting(run: ChaosRun, event_id: str) -> int:
    """Recipients waiting for the announcement to go up."""
    with read_only(run.engine) as conn:
        stmt = select(func.count()).where(routes.c.event_id == event_id, routes.c.outcome == "covering")
        return int(conn.execute(stmt).scalar_one())


def outcomes(run: ChaosRun, event_id: str) -> dict[str, int]:
    with read_only(run.engine) as conn:
        stmt = select(routes.c.outcome, func.count()).where(routes.c.event_id == event_id).group_by(routes.c.outcome)
        return {outcome: int(n) for outcome, n in conn.execute(stmt)}
