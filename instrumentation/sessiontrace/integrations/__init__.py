"""Where sessions enter and leave a process: HTTP servers and clients, Celery.

Each module imports its framework lazily, so installing sessiontrace never pulls them in.
"""
