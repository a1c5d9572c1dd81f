"""Fan-out: an accepted event's audience in pages, and the outbox of messages a committed step
hands on.
"""
