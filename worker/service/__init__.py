"""herald serve: the HTTP app (Twilio callbacks, the announcement site, health) and what it
runs on.
"""
