"""Delivery: rendering a notice for a channel, sending a batch through it and recording the
receipts, and asking providers about what is still unconfirmed.
"""
