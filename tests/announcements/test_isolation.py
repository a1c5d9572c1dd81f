"""One announcement that cannot be rendered never stops the others.

Publishing rebuilds the whole site, so a timeline entry or a page that fails to render used
to fail every publication, for ever, and the people waiting to be covered never reached a
terminal outcome. Now each announcement's pages are built on their own: an entry whose
templates fail goes up in plain words (and the ledger says so), an announcement whose page
cannot be built at all is left out of the indexes and feeds, retried a bounded number of
times, and its waiting people end ``unreached`` with the reason; every other announcement
is published and its people are covered.

The faults are injected where no real part can produce them on demand: an event row stored
directly, past validation, with a ``detected_at`` in year 1 east of Greenwich (the finding's
own event), and templates that fail for one event or one announcement only.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from support import Pipeline, incident, write_routing

from worker.announce.publishing import BUILD_ATTEMPTS
from worker.announce.site import page_path
from worker.config import DEFAULT_TEMPLATES_DIR, Settings
from worker.store import announcements as announcement_store
from worker.store.schema import announcements, events

#: Every notice by email only, announced: a person without an address is covered at once.
EMAIL_ONLY = "".join(
    f"  - name: {kind}\n    match: {{type: {kind}}}\n    stages: [{{channels: [email], wait: 10m}}]\n"
    f"    announce: {'false' if kind == 'account_notice' else 'true'}\n"
    for kind in ("security_incident", "account_notice", "service_notice", "policy_change")
)
BREAKS_ENTRY = "This update breaks its template"


def reachable(prefix: str, count: int = 2) -> list[dict[str, Any]]:
    return [{"user_id": f"{prefix}r{i}", "email": f"{prefix}r{i}@example.com", "locale": "en"} for i in range(count)]


def nobody(prefix: str, count: int = 2) -> list[dict[str, Any]]:
    """People with no contact at all: only the announcement can cover them."""
    return [{"user_id": f"{prefix}n{i}", "locale": "zh-CN" if i % 2 else "en"} for i in range(count)]


def settings_for(make_settings: Callable[..., Settings], tmp_path: Path, **overrides: Any) -> Settings:
    return make_settings(
        routing_file=write_routing(tmp_path, EMAIL_ONLY),
        announcements_dir=tmp_path / "site",
        stuck_after_s=1.5,
        sweep_interval_s=0.5,
        **overrides,
    )


def row_of(pipeline: Pipeline, incident_id: str) -> Any:
    with pipeline.engine.connect() as conn:
        return conn.execute(select(announcements).where(announcements.c.topic == f"incident:{incident_id}")).one()


def wait_published(pipeline: Pipeline, incident_id: str, revision: int, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with pipeline.engine.connect() as conn:
            row = conn.execute(
                select(announcements).where(announcements.c.topic == f"incident:{incident_id}")
            ).one_or_none()
        if row is not None and row.published_revision >= revision:
            return row
        time.sleep(0.1)
    raise AssertionError(f"{incident_id} revision {revision} never went public")


def listed(settings: Settings, locale: str) -> set[str]:
    """The announcement pages the locale's index and both feeds link to (they must agree)."""
    site = settings.resolved_announcements_dir
    index = (site / locale / "index.html").read_text(encoding="utf-8")
    items = json.loads((site / locale / "feed.json").read_text(encoding="utf-8"))["items"]
    atom = (site / locale / "feed.atom").read_text(encoding="utf-8")
    in_feed = {item["url"].rsplit("/", 1)[1] for item in items}
    assert all(f"/{name}" in atom for name in in_feed)
    assert all(f'href="{name}"' in index for name in in_feed), "the index and the feeds disagree"
    return {name.removesuffix(".html") for name in in_feed}


def store_unvalidated_update(pipeline: Pipeline, first_event_id: str, **data: Any) -> str:
    """A later event of the same incident written straight into ``events``, past validation."""
    with pipeline.engine.begin() as conn:
        row = conn.execute(select(events).where(events.c.event_id == first_event_id)).one()
        body = json.loads(row.body)
        event_id = f"evt-raw-{uuid.uuid4().hex[:8]}"
        body["event_id"] = event_id
        body["data"].update(data)
        later = row.occurred_at.replace(tzinfo=UTC) + timedelta(minutes=5)
        values = dict(row._mapping)
        values.update(
            event_id=event_id,
            digest=uuid.uuid4().hex,
            body=json.dumps(body),
            occurred_at=later,
            accepted_at=later,
            fanout_done_at=later,
            fanout_updated_at=later,
        )
        conn.execute(events.insert().values(**values))
        announcement_store.bump(conn, row.topic, datetime.now(UTC) - timedelta(minutes=1))
    return event_id


#: Updates stored past validation: the finding's own (a date UTC cannot hold; intake refuses it
#: now, and the filters show it in its own offset), and one the event model no longer accepts.
STORED_FAULTS = {
    "detected in year 1 east of Greenwich": {"detected_at": "0001-01-01T00:00:00+01:00"},
    "no longer a valid event": {"severity": "apocalyptic", "remedies": None},
}


@pytest.mark.parametrize("fault", list(STORED_FAULTS))
def test_an_update_stored_past_validation_stops_no_other_announcement(
    make_settings: Callable[..., Settings], tmp_path: Path, fault: str
) -> None:
    settings = settings_for(make_settings, tmp_path)
    broken = incident(reachable("b") + nobody("b"), severity="critical", incident_id="INC-BROKEN")
    healthy = incident(nobody("h", 3), severity="critical", incident_id="INC-HEALTHY")

    with Pipeline(settings) as pipeline:
        pipeline.publish(broken)
        pipeline.wait_terminal([broken["event_id"]], timeout=30)
        wait_published(pipeline, "INC-BROKEN", 1)
        # Given the announcement's timeline holds an event stored past validation
        raw_event_id = store_unvalidated_update(
            pipeline,
            broken["event_id"],
            status="identified",
            situation="Stored update: the leak is contained.",
            **STORED_FAULTS[fault],
        )
        # When another incident needs its own announcement
        pipeline.publish(healthy)
        pipeline.wait_terminal([healthy["event_id"]], timeout=30)
        wait_published(pipeline, "INC-HEALTHY", 1)
        broken_row = wait_published(pipeline, "INC-BROKEN", 2)
        healthy_row = row_of(pipeline, "INC-HEALTHY")
        healthy_outcomes = pipeline.outcomes(healthy["event_id"])
        covered = [r for r in pipeline.ledger_rows(healthy["event_id"]) if r.status == "covered"]
        plain = [r for r in pipeline.ledger_rows(raw_event_id) if r.status == "plain"]

    # Then the healthy one is up and covers its people, and the broken one's update is up too.
    assert healthy_outcomes == {"covered": 3}
    assert {r.provider_message_id for r in covered} == {healthy_row.id} and len(covered) == 3
    site = settings.resolved_announcements_dir
    for locale in ("en", "zh-CN"):
        assert listed(settings, locale) == {healthy_row.id, broken_row.id}
        assert (site / page_path(healthy_row.id, locale)).is_file()
        page = (site / page_path(broken_row.id, locale)).read_text(encoding="utf-8")
        assert "Stored update: the leak is contained." in page
    if fault == "no longer a valid event":
        # Built from the event as stored, since it no longer parses; the ledger says so.
        assert len(plain) == 1 and "InvalidEvent" in plain[0].reason and "en, zh-CN" in plain[0].reason


def test_an_entry_whose_template_fails_goes_up_in_plain_words_and_the_others_publish(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    templates = tmp_path / "templates"
    shutil.copytree(DEFAULT_TEMPLATES_DIR, templates)
    fault = f'{{% if data.title == "{BREAKS_ENTRY}" %}}{{{{ data.no_such_field }}}}{{% endif %}}\n'
    for path in ("security_incident/en/announcement.html", "security_incident/zh-CN/announcement.txt"):
        target = templates / path
        target.write_text(fault + target.read_text(encoding="utf-8"), encoding="utf-8")
    settings = settings_for(make_settings, tmp_path, templates_dir=templates)
    first = incident(reachable("b") + nobody("b"), severity="critical", incident_id="INC-BROKEN")
    update_ = incident(reachable("b"), severity="critical", incident_id="INC-BROKEN", status="identified")
    update_["data"].update(title=BREAKS_ENTRY, situation="The attacker used <script>a leaked key</script>.")
    healthy = incident(nobody("h", 3), severity="critical", incident_id="INC-HEALTHY")

    with Pipeline(settings) as pipeline:
        pipeline.publish(first)
        pipeline.wait_terminal([first["event_id"]], timeout=30)
        wait_published(pipeline, "INC-BROKEN", 1)
        pipeline.publish(update_)
        pipeline.wait_terminal([update_["event_id"]], timeout=30)
        pipeline.publish(healthy)
        pipeline.wait_terminal([healthy["event_id"]], timeout=30)
        healthy_row = wait_published(pipeline, "INC-HEALTHY", 1)
        broken_row = wait_published(pipeline, "INC-BROKEN", 2)
        healthy_outcomes = pipeline.outcomes(healthy["event_id"])
        plain = [r for r in pipeline.ledger_rows(update_["event_id"]) if r.status == "plain"]

    assert healthy_outcomes == {"covered": 3}
    site = settings.resolved_announcements_dir
    for locale in ("en", "zh-CN"):
        assert listed(settings, locale) == {healthy_row.id, broken_row.id}
        page = (site / page_path(broken_row.id, locale)).read_text(encoding="utf-8")
        # The failing entry is there in plain, escaped words; the earlier one as its template has it.
        assert "The attacker used &lt;script&gt;a leaked key&lt;/script&gt;." in page
        assert "<script>" not in page
        assert first["data"]["situation"] in page
    # The ledger says the fallback was used, for which announcement, in which languages, and why.
    assert plain, "no ledger row says the entry went up in plain words"
    assert {(r.recipient_ref, r.channel, r.provider_message_id) for r in plain} == {
        ("public", "announcement", broken_row.id)
    }
    assert "en, zh-CN" in plain[0].reason and "UndefinedError" in plain[0].reason
    assert "\n" not in plain[0].reason


def test_an_announcement_whose_page_cannot_be_built_is_left_out_and_its_people_end_unreached(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    templates = tmp_path / "templates"
    shutil.copytree(DEFAULT_TEMPLATES_DIR, templates)
    page_template = templates / "_site" / "en" / "page.html"
    source = page_template.read_text(encoding="utf-8")
    fault = '{% if page.slug == "incident-inc-broken" %}{{ page.no_such_field }}{% endif %}'
    page_template.write_text(source.replace("{% block content %}", "{% block content %}" + fault, 1), encoding="utf-8")
    assert fault in page_template.read_text(encoding="utf-8")
    settings = settings_for(make_settings, tmp_path, templates_dir=templates)
    broken = incident(reachable("b") + nobody("b"), severity="critical", incident_id="INC-BROKEN")
    healthy = incident(nobody("h", 3), severity="critical", incident_id="INC-HEALTHY")

    with Pipeline(settings) as pipeline:
        pipeline.publish(broken)
        pipeline.publish(healthy)
        pipeline.wait_terminal([broken["event_id"], healthy["event_id"]], timeout=30)
        healthy_row = wait_published(pipeline, "INC-HEALTHY", 1)
        broken_row = row_of(pipeline, "INC-BROKEN")
        broken_outcomes = pipeline.outcomes(broken["event_id"])
        healthy_outcomes = pipeline.outcomes(healthy["event_id"])
        rows = pipeline.ledger_rows(broken["event_id"])
        time.sleep(3 * settings.stuck_after_s)  # the sweep does not try again once it has given up
        attempts_later = row_of(pipeline, "INC-BROKEN").failures

    assert healthy_outcomes == {"covered": 3}
    assert broken_outcomes == {"reached": 2, "unreached": 2}
    # Tried a bounded number of times, each recorded against the announcement with the reason.
    failed = [r for r in rows if r.status == "failed" and r.recipient_ref == "public"]
    assert len(failed) == broken_row.failures >= BUILD_ATTEMPTS
    assert attempts_later == broken_row.failures
    assert all(r.provider_message_id == broken_row.id and "UndefinedError" in r.reason for r in failed)
    assert broken_row.published_revision == 0 and broken_row.first_public_at is None
    assert "UndefinedError" in broken_row.failure
    unreached = [r for r in rows if r.status == "unreached"]
    assert len(unreached) == 2
    assert all(f"announcement {broken_row.id} could not be published: " in r.reason for r in unreached)
    # The site has what succeeded, and nothing of the broken one.
    site = settings.resolved_announcements_dir
    for locale in ("en", "zh-CN"):
        assert listed(settings, locale) == {healthy_row.id}
    assert not (site / page_path(broken_row.id, "en")).exists()
    # And the command line says so.
    cli = subprocess.run(
        [str(Path(sys.executable).parent / "herald"), "announcements", "list", "--json"],
        env={**os.environ, **settings.as_env()},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 0, cli.stderr
    shown = {a["id"]: a for a in json.loads(cli.stdout)}
    assert shown[broken_row.id]["failures"] == broken_row.failures
    assert "UndefinedError" in shown[broken_row.id]["failure"] and shown[healthy_row.id]["failures"] == 0
