"""Every name sessiontrace puts on the wire, in one place.

Attribute, event, baggage and header names are constants here and nowhere else. Where an
OpenTelemetry semantic convention exists we use it (``session.id``, ``user.id``); the rest lives in
the ``sessiontrace.*`` namespace and is marked provisional until upstream settles.
The ``NAMES`` table at the bottom feeds the documentation and a test that checks it is complete.
"""

from __future__ import annotations

from typing import Final, NamedTuple

# --- span and log attributes -------------------------------------------------------------------
SESSION_ID: Final = "session.id"
"""The session (process) id: a UUID, version 7 when we mint it. Semconv ``session.*`` (development)."""
SESSION_PREVIOUS_ID: Final = "session.previous_id"
"""The session this one continues or undoes. Semconv ``session.*`` (development)."""
USER_ID: Final = "user.id"
"""Who started the activity. Semconv ``user.*`` (development)."""
USER_ROLES: Final = "user.roles"
"""The user's roles, a string array. Semconv ``user.*`` (development); replaces ``enduser.role``."""
TRIGGER_SOURCE: Final = "sessiontrace.trigger.source"
"""What started the session: one of ``TRIGGER_SOURCES``. Provisional, our namespace."""
TRIGGER_TYPE: Final = "sessiontrace.trigger.type"
"""Free-form detail of the trigger, e.g. ``POST /claims`` or a cron name. Provisional."""

SESSION_ATTRIBUTES: Final = (SESSION_ID, SESSION_PREVIOUS_ID, USER_ID, USER_ROLES, TRIGGER_SOURCE, TRIGGER_TYPE)
"""The attributes stamped on every span and log record of a session."""

TRIGGER_SOURCES: Final = frozenset({"ui", "api", "schedule", "webhook", "queue", "system"})

# --- span and event names -----------------------------------------------------------------------
SESSION_SPAN: Final = "session"
"""Name of the span that ``session()`` opens around the activity."""
SESSION_START_EVENT: Final = "session.start"
"""Event on the session span when a session id is minted (semconv event name, development)."""
SESSION_END_EVENT: Final = "session.end"
"""Event on the session span when the activity that minted the session ends."""

# --- baggage -----------------------------------------------------------------------------------
# Baggage keys are the attribute names, so a peer that copies baggage to attributes (the contrib
# BaggageSpanProcessor, Jaeger's uberctx-*) produces the same names we do.
BAGGAGE_SESSION_ID: Final = SESSION_ID
BAGGAGE_PREVIOUS_ID: Final = SESSION_PREVIOUS_ID
BAGGAGE_USER_ID: Final = USER_ID
BAGGAGE_USER_ROLES: Final = USER_ROLES
"""Roles travel comma-separated: baggage values are strings."""
BAGGAGE_TRIGGER_SOURCE: Final = TRIGGER_SOURCE
BAGGAGE_TRIGGER_TYPE: Final = TRIGGER_TYPE
BAGGAGE_SIGNATURE: Final = "sessiontrace.sig"
"""HMAC-SHA256 over the session entries, minted by a trusted edge. Provisional."""

SESSION_BAGGAGE_KEYS: Final = (
    BAGGAGE_SESSION_ID,
    BAGGAGE_PREVIOUS_ID,
    BAGGAGE_USER_ID,
    BAGGAGE_USER_ROLES,
    BAGGAGE_TRIGGER_SOURCE,
    BAGGAGE_TRIGGER_TYPE,
    BAGGAGE_SIGNATURE,
)
"""Every baggage key we own: the outbound host policy strips exactly these."""

FOREIGN_SESSION_BAGGAGE_KEYS: Final = (
    "langfuse_session_id",
    "traceloop.association.properties.session_id",
    "gen_ai.conversation.id",
)
"""Session ids other tools write; accepted inbound (when well formed) as ``session.id``."""

# --- headers -------------------------------------------------------------------------------------
SESSION_RESPONSE_HEADER: Final = "x-session-id"
"""Response header our inbound middleware sets, so a caller (or a support ticket) can quote the id."""

# --- stdlib logging ------------------------------------------------------------------------------
LOG_RECORD_FIELDS: Final = (SESSION_ID, USER_ID)
"""Fields added to stdlib ``LogRecord``s, usable as ``%(session.id)s`` in format strings."""


class Name(NamedTuple):
    name: str
    kind: str
    status: str
    doc: str


NAMES: Final = (
    Name(SESSION_ID, "attribute, baggage", "semconv (development)", "session / process id"),
    Name(SESSION_PREVIOUS_ID, "attribute, baggage", "semconv (development)", "session continued or undone"),
    Name(USER_ID, "attribute, baggage", "semconv (development)", "user who started the activity"),
    Name(USER_ROLES, "attribute, baggage", "semconv (development)", "roles of that user"),
    Name(TRIGGER_SOURCE, "attribute, baggage", "provisional", "ui, api, schedule, webhook, queue, system"),
    Name(TRIGGER_TYPE, "attribute, baggage", "provisional", "detail of the trigger"),
    Name(BAGGAGE_SIGNATURE, "baggage", "provisional", "HMAC of the session entries"),
    Name(SESSION_SPAN, "span", "provisional", "span around a session"),
    Name(SESSION_START_EVENT, "event", "semconv (development)", "a session id was minted"),
    Name(SESSION_END_EVENT, "event", "semconv (development)", "the activity that minted it ended"),
    Name(SESSION_RESPONSE_HEADER, "header", "provisional", "session id echoed to the caller"),
)
