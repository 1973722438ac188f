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
"""HMAC-SHA256 over the session entries (and the workflow run's, when one travels), minted by a
trusted edge. Provisional."""

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

# --- workflows ----------------------------------------------------------------------------------
# Aligned with the open semantic-conventions proposal for ``workflow.*`` (PR #2387, development):
# a run is an "execution", a step is a "task run". What the proposal lacks lives under
# ``sessiontrace.workflow.*`` (provisional).
WORKFLOW_NAME: Final = "workflow.name"
"""Name of the workflow (``claims-triage``)."""
WORKFLOW_RUN_ID: Final = "workflow.execution.id"
"""One run of the workflow, shared by all of its steps, in every process."""
WORKFLOW_RESULT: Final = "workflow.execution.result"
"""How the run ended: ``success``, ``failure``, ``cancellation``."""
WORKFLOW_TRIGGER_TYPE: Final = "workflow.trigger.type"
"""What started the run (the session's trigger source: ``api``, ``schedule``...)."""
WORKFLOW_TRIGGER_NAME: Final = "workflow.trigger.name"
"""Detail of the trigger (the session's trigger type: ``POST /claims``)."""
STEP_NAME: Final = "workflow.task.name"
"""Name of the step."""
STEP_ID: Final = "workflow.task.id"
"""Stable id of the step within its workflow definition."""
STEP_RESULT: Final = "workflow.task.run.result"
"""How the step attempt ended: ``success``, ``failure``, ``cancellation``."""
STEP_INDEX: Final = "sessiontrace.workflow.step.index"
"""Position of the step in its run, from 0. Provisional."""
STEP_ATTEMPT: Final = "sessiontrace.workflow.step.attempt"
"""Attempt number of a retried step, from 1. Provisional."""
WORKFLOW_STATUS: Final = "sessiontrace.workflow.status"
"""Last status of a run or step: one of ``WORKFLOW_STATUSES``. Provisional."""
WORKFLOW_STATUSES: Final = ("pending", "running", "waiting_for_human", "succeeded", "failed", "cancelled")
STATUS_CHANGE_EVENT: Final = "sessiontrace.workflow.status_change"
"""Event on a run or step span at each status change. Provisional."""
STATUS_FROM: Final = "sessiontrace.workflow.status.from"
STATUS_TO: Final = "sessiontrace.workflow.status.to"
STATUS_REASON: Final = "sessiontrace.workflow.status.reason"
ERROR_TYPE: Final = "error.type"
"""Class of the error that ended a span (semconv, stable)."""
WORKFLOW_SPAN: Final = "workflow"
"""Span name prefix of a run: ``workflow {name}``."""
STEP_SPAN: Final = "step"
"""Span name prefix of a step attempt: ``step {name}``."""
BAGGAGE_WORKFLOW_NAME: Final = WORKFLOW_NAME
BAGGAGE_WORKFLOW_RUN_ID: Final = WORKFLOW_RUN_ID
WORKFLOW_BAGGAGE_KEYS: Final = (BAGGAGE_WORKFLOW_NAME, BAGGAGE_WORKFLOW_RUN_ID)
"""The run travels as baggage so that a step in a called process continues it. Inbound it must be
well formed; with a signing key it is signed with the session, and a receiver that requires
signatures continues only a signed run."""
OUR_BAGGAGE_KEYS: Final = SESSION_BAGGAGE_KEYS + WORKFLOW_BAGGAGE_KEYS
"""Every baggage key we own, session and run: what the outbound host policy strips."""

# --- generative AI (semantic-conventions-genai, development) --------------------------------------
GEN_AI_OPERATION_NAME: Final = "gen_ai.operation.name"
GEN_AI_PROVIDER_NAME: Final = "gen_ai.provider.name"
GEN_AI_REQUEST_MODEL: Final = "gen_ai.request.model"
GEN_AI_REQUEST_TEMPERATURE: Final = "gen_ai.request.temperature"
GEN_AI_REQUEST_TOP_P: Final = "gen_ai.request.top_p"
GEN_AI_REQUEST_MAX_TOKENS: Final = "gen_ai.request.max_tokens"
GEN_AI_REQUEST_SEED: Final = "gen_ai.request.seed"
GEN_AI_REQUEST_STOP_SEQUENCES: Final = "gen_ai.request.stop_sequences"
GEN_AI_REQUEST_FREQUENCY_PENALTY: Final = "gen_ai.request.frequency_penalty"
GEN_AI_REQUEST_PRESENCE_PENALTY: Final = "gen_ai.request.presence_penalty"
GEN_AI_REQUEST_CHOICE_COUNT: Final = "gen_ai.request.choice.count"
GEN_AI_REQUEST_TOP_K: Final = "gen_ai.request.top_k"
"""A double in the conventions, whatever the provider's type."""
GEN_AI_REQUEST_STREAM: Final = "gen_ai.request.stream"
"""Set (true) only on a streamed request: unset means not streamed."""
GEN_AI_RESPONSE_MODEL: Final = "gen_ai.response.model"
GEN_AI_RESPONSE_ID: Final = "gen_ai.response.id"
GEN_AI_RESPONSE_FINISH_REASONS: Final = "gen_ai.response.finish_reasons"
GEN_AI_USAGE_INPUT_TOKENS: Final = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT_TOKENS: Final = "gen_ai.usage.output_tokens"
GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS: Final = "gen_ai.usage.cache_read.input_tokens"
"""Input tokens served from the provider's prompt cache; included in ``gen_ai.usage.input_tokens``."""
GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS: Final = "gen_ai.usage.cache_creation.input_tokens"
"""Input tokens written to the provider's prompt cache; included in ``gen_ai.usage.input_tokens``."""
GEN_AI_CONVERSATION_ID: Final = "gen_ai.conversation.id"
GEN_AI_OUTPUT_TYPE: Final = "gen_ai.output.type"
GEN_AI_SYSTEM_INSTRUCTIONS: Final = "gen_ai.system_instructions"
"""Opt-in content: the system prompt, JSON."""
GEN_AI_INPUT_MESSAGES: Final = "gen_ai.input.messages"
"""Opt-in content: the prompt messages, JSON in the semconv message shape."""
GEN_AI_OUTPUT_MESSAGES: Final = "gen_ai.output.messages"
"""Opt-in content: the answer messages, JSON in the semconv message shape."""
GEN_AI_TOOL_NAME: Final = "gen_ai.tool.name"
GEN_AI_EVALUATION_EVENT: Final = "gen_ai.evaluation.result"
GEN_AI_EVALUATION_NAME: Final = "gen_ai.evaluation.name"
GEN_AI_EVALUATION_SCORE_VALUE: Final = "gen_ai.evaluation.score.value"
GEN_AI_EVALUATION_SCORE_LABEL: Final = "gen_ai.evaluation.score.label"
GEN_AI_EVALUATION_EXPLANATION: Final = "gen_ai.evaluation.explanation"
GEN_AI_TIME_TO_FIRST_CHUNK: Final = "gen_ai.response.time_to_first_chunk"
"""Seconds from request to the first streamed chunk (the name the provider SDKs' own spans use)."""
GEN_AI_CONFIDENCE: Final = "sessiontrace.gen_ai.confidence"
"""Latest confidence score in [0, 1] on the AI span, for search. Provisional."""
GEN_AI_REVIEW_SPAN: Final = "gen_ai.review"
"""Span of a human review (approve / override) linked to the AI call it judges. Provisional."""
GEN_AI_REVIEW_DECISION: Final = "sessiontrace.gen_ai.review.decision"
"""``approve`` or ``override``. Provisional."""
GEN_AI_REVIEWER: Final = "sessiontrace.gen_ai.review.reviewer"
"""Who reviewed (a user id). Provisional."""
CAPTURE_CONTENT_ENV: Final = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
"""Environment variable that turns prompt/answer capture on (semconv-genai convention)."""
SERVER_ADDRESS: Final = "server.address"
"""Host of the model's API, from the client's base URL (semconv, stable)."""
SERVER_PORT: Final = "server.port"
"""Its port, the scheme's default when the URL has none (semconv, stable)."""

# --- database changes ------------------------------------------------------------------------------
DB_CHANGE_EVENT: Final = "sessiontrace.db.change"
"""Span event for one audited record change. Provisional."""
DB_SYSTEM_NAME: Final = "db.system.name"
"""``postgresql``, ``sqlite`` (semconv)."""
DB_COLLECTION_NAME: Final = "db.collection.name"
"""The table changed (semconv)."""
DB_RECORD_ID: Final = "sessiontrace.db.record_id"
"""Canonical JSON of the changed record's primary key. Provisional."""
DB_CHANGE_TYPE: Final = "sessiontrace.db.change_type"
"""``insert``, ``update`` or ``delete``. Provisional."""
DB_CHANGED_FIELDS: Final = "sessiontrace.db.changed_fields"
"""Names of the columns that changed. Provisional."""
DB_PREVIOUS_VALUES: Final = "sessiontrace.db.previous_values"
"""Opt-in: JSON of the values before the change (after masking). Provisional."""
DB_NEW_VALUES: Final = "sessiontrace.db.new_values"
"""Opt-in: JSON of the values after the change (after masking). Provisional."""
DB_AUDIT_SEQ: Final = "sessiontrace.db.audit_seq"
"""Position of the change in the audit chain, when known at write time. Provisional."""
# Per-transaction settings (``set_config(name, value, true)``) through which the application tells
# PostgreSQL triggers who is changing what; a write without them is audited with the database user.
PG_SETTING_SESSION_ID: Final = "sessiontrace.session_id"
PG_SETTING_USER_ID: Final = "sessiontrace.user_id"
PG_SETTING_TRACE_ID: Final = "sessiontrace.trace_id"
PG_SETTING_SPAN_ID: Final = "sessiontrace.span_id"

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
    Name(BAGGAGE_SIGNATURE, "baggage", "provisional", "HMAC of the session and run entries"),
    Name(SESSION_SPAN, "span", "provisional", "span around a session"),
    Name(SESSION_START_EVENT, "event", "semconv (development)", "a session id was minted"),
    Name(SESSION_END_EVENT, "event", "semconv (development)", "the activity that minted it ended"),
    Name(SESSION_RESPONSE_HEADER, "header", "provisional", "session id echoed to the caller"),
    Name(WORKFLOW_NAME, "attribute, baggage", "semconv proposal (PR #2387)", "workflow name"),
    Name(WORKFLOW_RUN_ID, "attribute, baggage", "semconv proposal (PR #2387)", "one run of a workflow"),
    Name(WORKFLOW_RESULT, "attribute", "semconv proposal (PR #2387)", "success, failure, cancellation"),
    Name(WORKFLOW_TRIGGER_TYPE, "attribute", "semconv proposal (PR #2387)", "what started the run"),
    Name(WORKFLOW_TRIGGER_NAME, "attribute", "semconv proposal (PR #2387)", "detail of the trigger"),
    Name(STEP_NAME, "attribute", "semconv proposal (PR #2387)", "step name"),
    Name(STEP_ID, "attribute", "semconv proposal (PR #2387)", "step id"),
    Name(STEP_RESULT, "attribute", "semconv proposal (PR #2387)", "how a step attempt ended"),
    Name(STEP_INDEX, "attribute", "provisional", "position of the step in its run"),
    Name(STEP_ATTEMPT, "attribute", "provisional", "attempt number, from 1"),
    Name(WORKFLOW_STATUS, "attribute", "provisional", "last status of a run or step"),
    Name(STATUS_CHANGE_EVENT, "event", "provisional", "a status change, with from, to, reason"),
    Name(STATUS_FROM, "event attribute", "provisional", "status before"),
    Name(STATUS_TO, "event attribute", "provisional", "status after"),
    Name(STATUS_REASON, "event attribute", "provisional", "why it changed"),
    Name(ERROR_TYPE, "attribute", "semconv (stable)", "class of the error"),
    Name(WORKFLOW_SPAN, "span", "provisional", "a workflow run: `workflow {name}`"),
    Name(STEP_SPAN, "span", "provisional", "a step attempt: `step {name}`"),
    Name(GEN_AI_OPERATION_NAME, "attribute", "semconv-genai", "chat, text_completion, embeddings..."),
    Name(GEN_AI_PROVIDER_NAME, "attribute", "semconv-genai", "openai, anthropic, local..."),
    Name(GEN_AI_REQUEST_MODEL, "attribute", "semconv-genai", "model asked for"),
    Name(GEN_AI_REQUEST_TEMPERATURE, "attribute", "semconv-genai", "request setting"),
    Name(GEN_AI_REQUEST_TOP_P, "attribute", "semconv-genai", "request setting"),
    Name(GEN_AI_REQUEST_MAX_TOKENS, "attribute", "semconv-genai", "request setting"),
    Name(GEN_AI_REQUEST_SEED, "attribute", "semconv-genai", "request setting"),
    Name(GEN_AI_REQUEST_STOP_SEQUENCES, "attribute", "semconv-genai", "request setting"),
    Name(GEN_AI_REQUEST_FREQUENCY_PENALTY, "attribute", "semconv-genai", "request setting"),
    Name(GEN_AI_REQUEST_PRESENCE_PENALTY, "attribute", "semconv-genai", "request setting"),
    Name(GEN_AI_REQUEST_CHOICE_COUNT, "attribute", "semconv-genai", "request setting"),
    Name(GEN_AI_REQUEST_TOP_K, "attribute", "semconv-genai", "request setting"),
    Name(GEN_AI_REQUEST_STREAM, "attribute", "semconv-genai", "true on a streamed request"),
    Name(GEN_AI_RESPONSE_MODEL, "attribute", "semconv-genai", "model that answered"),
    Name(GEN_AI_RESPONSE_ID, "attribute", "semconv-genai", "provider's response id"),
    Name(GEN_AI_RESPONSE_FINISH_REASONS, "attribute", "semconv-genai", "why generation stopped"),
    Name(GEN_AI_USAGE_INPUT_TOKENS, "attribute", "semconv-genai", "prompt tokens"),
    Name(GEN_AI_USAGE_OUTPUT_TOKENS, "attribute", "semconv-genai", "answer tokens"),
    Name(GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS, "attribute", "semconv-genai", "prompt tokens read from cache"),
    Name(GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS, "attribute", "semconv-genai", "prompt tokens written to cache"),
    Name(GEN_AI_CONVERSATION_ID, "attribute", "semconv-genai", "conversation id"),
    Name(GEN_AI_OUTPUT_TYPE, "attribute", "semconv-genai", "text, json..."),
    Name(GEN_AI_SYSTEM_INSTRUCTIONS, "attribute (opt-in)", "semconv-genai", "system prompt"),
    Name(GEN_AI_INPUT_MESSAGES, "attribute (opt-in)", "semconv-genai", "prompt messages"),
    Name(GEN_AI_OUTPUT_MESSAGES, "attribute (opt-in)", "semconv-genai", "answer messages"),
    Name(GEN_AI_TOOL_NAME, "attribute", "semconv-genai", "tool called"),
    Name(GEN_AI_EVALUATION_EVENT, "event", "semconv-genai", "a confidence or evaluation"),
    Name(GEN_AI_EVALUATION_NAME, "event attribute", "semconv-genai", "what was evaluated"),
    Name(GEN_AI_EVALUATION_SCORE_VALUE, "event attribute", "semconv-genai", "score"),
    Name(GEN_AI_EVALUATION_SCORE_LABEL, "event attribute", "semconv-genai", "label"),
    Name(GEN_AI_EVALUATION_EXPLANATION, "event attribute", "semconv-genai", "why"),
    Name(GEN_AI_TIME_TO_FIRST_CHUNK, "attribute", "semconv-genai (development)", "seconds to the first streamed chunk"),
    Name(GEN_AI_CONFIDENCE, "attribute", "provisional", "latest confidence on the AI span"),
    Name(GEN_AI_REVIEW_SPAN, "span", "provisional", "a human review of an AI call"),
    Name(GEN_AI_REVIEW_DECISION, "attribute", "provisional", "approve or override"),
    Name(GEN_AI_REVIEWER, "attribute", "provisional", "who reviewed"),
    Name(CAPTURE_CONTENT_ENV, "environment variable", "semconv-genai", "turns content capture on"),
    Name(SERVER_ADDRESS, "attribute", "semconv (stable)", "host of a model's API"),
    Name(SERVER_PORT, "attribute", "semconv (stable)", "port of a model's API"),
    Name(DB_CHANGE_EVENT, "event", "provisional", "one audited record change"),
    Name(DB_SYSTEM_NAME, "event attribute", "semconv", "database system"),
    Name(DB_COLLECTION_NAME, "event attribute", "semconv", "table changed"),
    Name(DB_RECORD_ID, "event attribute", "provisional", "primary key of the record, JSON"),
    Name(DB_CHANGE_TYPE, "event attribute", "provisional", "insert, update, delete"),
    Name(DB_CHANGED_FIELDS, "event attribute", "provisional", "columns that changed"),
    Name(DB_PREVIOUS_VALUES, "event attribute (opt-in)", "provisional", "values before, JSON"),
    Name(DB_NEW_VALUES, "event attribute (opt-in)", "provisional", "values after, JSON"),
    Name(DB_AUDIT_SEQ, "event attribute", "provisional", "position in the audit chain"),
    Name(PG_SETTING_SESSION_ID, "PostgreSQL setting", "provisional", "session id for triggers"),
    Name(PG_SETTING_USER_ID, "PostgreSQL setting", "provisional", "user id for triggers"),
    Name(PG_SETTING_TRACE_ID, "PostgreSQL setting", "provisional", "trace id for triggers"),
    Name(PG_SETTING_SPAN_ID, "PostgreSQL setting", "provisional", "span id for triggers"),
)


def names_markdown() -> str:
    """``docs/names.md``: the table above as Markdown (a test keeps the file in step)."""
    lines = [
        "# Names on the wire",
        "",
        "Generated from `sessiontrace/semconv.py` by `python -m sessiontrace.semconv`; do not edit by hand.",
        "",
        "| name | kind | status | meaning |",
        "| --- | --- | --- | --- |",
    ]
    lines += [f"| `{n.name}` | {n.kind} | {n.status} | {n.doc} |" for n in NAMES]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(names_markdown(), end="")
