"""Routing: the routing policy (which channels, in what order, how long to wait) and each
person's chain through it.
"""
