"""The fuzz suite's budget: hypothesis profiles, example counts, and the tally each test prints.

``HYPOTHESIS_PROFILE=ci`` (the default) is derandomised: the same examples on every run, so
CI never flakes on a new draw, and about 1,000 payloads per backend. ``HYPOTHESIS_PROFILE=deep``
draws fresh examples, ten times as many, and keeps the failures it finds in ``.hypothesis/``.
The profiles are applied to the fuzz tests only (``FUZZ``), never loaded globally.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from typing import Any

from hypothesis import HealthCheck, Phase, settings

PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")

_COMMON = {
    "deadline": None,  # a database round trip is not a property of the input
    "print_blob": True,
    # One database per test is shared by its examples; every example counts its own rows.
    "suppress_health_check": [
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
}
settings.register_profile("fuzz-ci", derandomize=True, database=None, **_COMMON)  # type: ignore[arg-type]
settings.register_profile("fuzz-deep", derandomize=False, **_COMMON)  # type: ignore[arg-type]

#: The settings every fuzz test starts from.
FUZZ = settings.get_profile("fuzz-deep" if PROFILE == "deep" else "fuzz-ci")

#: How many times the CI budget a run draws.
SCALE = 10 if PROFILE == "deep" else 1

#: A run that has found a failure in a whole-pipeline example reports it as it was drawn:
#: each shrinking step would be another pipeline run with its timeouts.
NO_SHRINK = (Phase.explicit, Phase.reuse, Phase.generate)


def examples(ci: int) -> int:
    """The number of examples a test draws under the current profile."""
    return ci * SCALE


class Tally(Counter[str]):
    """What a fuzz test tried and what became of it, printed when the test ends."""

    def __init__(self) -> None:
        super().__init__()
        self.started = time.monotonic()

    #: The figures the README quotes, in this order; anything else counted follows.
    FIGURES = ("payloads", "accepted", "duplicate", "rejected", "raised", "events", "recipients", "terminal", "lost")

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text("tally")  # a falsifying example need not show the running counts

    def line(self) -> str:
        """The figures on one line, with the time since the test started."""
        shown = [f"{key} {self[key]:,}" for key in self.FIGURES if key in self or key in ("payloads", "lost")]
        shown += [f"{key} {value:,}" for key, value in sorted(self.items()) if key not in self.FIGURES]
        return f"{', '.join(shown)}; {time.monotonic() - self.started:.1f} s"
