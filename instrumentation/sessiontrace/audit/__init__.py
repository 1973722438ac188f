"""Database changes, audited: session columns on business tables, an append-only hash-chained
audit log written in the same transaction as the change, span events, verify and revert.

Two capture modes (see the README's table of which write paths each covers): ORM listeners
(SQLAlchemy, any database) and PostgreSQL triggers (also raw SQL and other clients).
"""
