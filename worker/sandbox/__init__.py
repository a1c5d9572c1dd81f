"""Local stand-ins for the outside world that herald ships for development, tests, the demo
and the benchmark: ``smtp_sink`` (an aiosmtpd server that records or counts mail).

Import from the submodules (``from worker.sandbox.smtp_sink import SmtpSink``); this package
imports nothing itself so that ``python -m worker.sandbox.smtp_sink`` runs cleanly.
"""
