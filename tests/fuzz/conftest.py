"""The fuzz suite's fixture: the tally each test fills and prints (``-s``) when it ends."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from budget import PROFILE, Tally


@pytest.fixture
def tally(request: pytest.FixtureRequest) -> Iterator[Tally]:
    """A counter the test fills; printed with the elapsed time when the test ends."""
    counts = Tally()
    yield counts
    print(f"\n[fuzz] {request.node.name} ({PROFILE}): {counts.line()}")
