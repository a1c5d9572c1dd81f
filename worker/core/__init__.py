"""The core values every layer may use: errors, statuses, the clock, redaction, limits, contact
checks and the messages channels are handed. They import nothing above them.
"""
