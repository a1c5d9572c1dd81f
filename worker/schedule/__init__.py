"""The durable schedule: jobs that must happen at a time (policy-change notices) and the
scheduler that hands them to the workers.
"""
