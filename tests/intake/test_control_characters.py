"""Control characters in what a producer writes never reach a message, a letter or TwiML.

NUL, SOH and ESC in a title, a name or ``source`` used to survive validation: TwiML became
malformed XML and, on PostgreSQL, storing the station letter failed until retries ran out.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

from sqlalchemy import select
from support import Pipeline, Rig, every_type_at_once, incident, write_routing

from worker.store.schema import events, letters

CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f]")


def test_control_characters_are_dropped_so_calls_letters_and_sms_all_go_out(rig: Rig, tmp_path: Path) -> None:
    rig.defaults.update(
        channels=("insite", "sms", "phone"),
        routing_file=write_routing(tmp_path, every_type_at_once("[insite, sms, phone]")),
    )
    settings = rig.settings()
    people = [
        {"user_id": "c1", "name": "Ann\x00\x1b[31m Lee", "phone": "+14155550101", "locale": "en"},
        {"user_id": "c2", "name": "\x01王芳", "phone": "+8613900000002", "locale": "zh-CN"},
    ]
    event = incident(people, severity="critical", title="Leak\x00 of \x01tokens\x1b[0m & <keys>")
    event["source"] = "sec\x00team\x1b"
    with Pipeline(settings) as pipeline:
        pipeline.publish(event)
        pipeline.wait_terminal([event["event_id"]], timeout=90)
        counts = pipeline.counts(event["event_id"])
        with pipeline.engine.connect() as conn:
            subjects = [row.subject for row in conn.execute(select(letters.c.subject))]
            source = conn.execute(select(events.c.source)).scalar_one()
    assert counts == {("insite", "delivered"): 2, ("sms", "delivered"): 2, ("phone", "acknowledged"): 2}
    assert len(subjects) == 2 and not any(CONTROLS.search(s) for s in subjects)
    assert any("Leak of tokens[0m & <keys>" in s for s in subjects)
    for call in rig.sandbox.calls:
        assert call.twiml is not None
        ET.fromstring(call.twiml)  # well-formed XML
        assert not CONTROLS.search(call.twiml)
    assert all(not CONTROLS.search(m.body) for m in rig.sandbox.messages)
    assert source == "secteam"
