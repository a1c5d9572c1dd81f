"""The module dramatiq's CLI imports in each worker process: ``dramatiq worker.app``.

Importing it builds the broker from the settings, checks the wiring and declares the
actors; a wrong setting stops the worker here, before it takes any message.
"""

from __future__ import annotations

import dramatiq

from worker.actors import declare_actors
from worker.broker import build_broker
from worker.config import get_settings
from worker.logs import configure_logging

configure_logging()
settings = get_settings()
broker = build_broker(settings)
dramatiq.set_broker(broker)
actors = declare_actors(broker, settings)
