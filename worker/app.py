"""The module dramatiq's CLI imports in each worker process: ``dramatiq worker.app``.

Importing it builds the broker from the settings, checks the wiring and declares the
actors; a wrong setting stops the worker here, before it takes any message.
"""

from __future__ import annotations

from worker.logs import configure_logging

# First, so that what the imports below log at import time goes through the one handler too.
configure_logging()

import dramatiq  # noqa: E402

from worker.actors import declare_actors  # noqa: E402
from worker.broker import build_broker  # noqa: E402
from worker.config import get_settings  # noqa: E402

settings = get_settings()
broker = build_broker(settings)
dramatiq.set_broker(broker)
actors = declare_actors(broker, settings)
