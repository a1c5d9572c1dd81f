"""Intake: what arrives (the event kinds and their envelope) and how it is judged, deduplicated
and recorded.
"""
