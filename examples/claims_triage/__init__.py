"""Claims triage: a realistic two-service example traced end to end by sessiontrace.

``intake`` (ASGI) receives a claim, starts the session and runs the ``claims-triage`` workflow:
validate, classify severity with a small local model (``model``), send unsure answers to a
human, reserve funds at ``ledger`` (WSGI) over HTTP. ``sessiontrace demo`` runs both. Given a
database, both keep their records (``records``) there through audited SQLAlchemy models.
"""

AUDIT_DB_ENV = "SESSIONTRACE_DEMO_AUDIT_DB"
"""The database URL both services default to (``sessiontrace demo`` sets it for them)."""
