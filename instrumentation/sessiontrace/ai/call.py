"""``ai_call()``: one call to any model (remote or local) as a GenAI client span.

Span name ``{operation} {model}``, kind CLIENT, attributes from the GenAI semantic conventions.
The provider instrumentors (OpenAI, Anthropic) build on the same ``AICall`` so every AI span looks
alike wherever it came from.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from sessiontrace import _attributes, semconv
from sessiontrace._tracer import AI_TRACER_NAME, GlobalTracer
from sessiontrace.ai import content
from sessiontrace.ai.confidence import record_confidence

_tracer = GlobalTracer(AI_TRACER_NAME)

# Request settings with a GenAI attribute of their own; other settings are ignored.
REQUEST_ATTRIBUTES: Mapping[str, str] = {
    "temperature": semconv.GEN_AI_REQUEST_TEMPERATURE,
    "top_p": semconv.GEN_AI_REQUEST_TOP_P,
    "max_tokens": semconv.GEN_AI_REQUEST_MAX_TOKENS,
    "max_completion_tokens": semconv.GEN_AI_REQUEST_MAX_TOKENS,
    "seed": semconv.GEN_AI_REQUEST_SEED,
    "stop": semconv.GEN_AI_REQUEST_STOP_SEQUENCES,
    "stop_sequences": semconv.GEN_AI_REQUEST_STOP_SEQUENCES,
    "frequency_penalty": semconv.GEN_AI_REQUEST_FREQUENCY_PENALTY,
    "presence_penalty": semconv.GEN_AI_REQUEST_PRESENCE_PENALTY,
    "n": semconv.GEN_AI_REQUEST_CHOICE_COUNT,
    "top_k": semconv.GEN_AI_REQUEST_TOP_K,
}


_BASE_CACHE_SIZE = 256
_base: dict[tuple[str, str, str], tuple[str, dict[str, Any]]] = {}
"""Span name and first attributes per (operation, provider, model): the same few on every call."""


def _name_and_base(operation: str, provider: str, model: str) -> tuple[str, dict[str, Any]]:
    key = (operation, provider, model)
    found = _base.get(key)
    if found is None:
        found = (
            f"{operation} {model}",
            {
                semconv.GEN_AI_OPERATION_NAME: operation,
                semconv.GEN_AI_PROVIDER_NAME: provider,
                semconv.GEN_AI_REQUEST_MODEL: model,
            },
        )
        if len(_base) >= _BASE_CACHE_SIZE:
            _base.clear()
        _base[key] = found
    return found


class Endpoint(NamedTuple):
    """Where a client sends its calls: the base URL (for the outbound policy) and the semconv
    ``server.address`` / ``server.port`` attributes."""

    url: str
    attributes: Mapping[str, Any]


_DEFAULT_PORTS: Mapping[str, int] = {"https": 443, "http": 80, "wss": 443, "ws": 80}
_ENDPOINT_CACHE_SIZE = 256
_endpoints: dict[int, tuple[Any, Endpoint]] = {}
"""Per base-URL object (a client keeps the same one for its life): parsed once, not per call.
Keyed by ``id`` with the object itself kept, so the id cannot be reused while cached."""


def endpoint(base_url: Any) -> Endpoint | None:
    """The endpoint of a client's ``base_url`` (an ``httpx`` URL or a string), or None."""
    if base_url is None:
        return None
    found = _endpoints.get(id(base_url))
    if found is not None and found[0] is base_url:
        return found[1]
    url = str(base_url)
    attributes: dict[str, Any] = {}
    try:
        parts = urlsplit(url)
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
    except ValueError:  # a port that is not a number
        parts, port = urlsplit(""), None
    if parts.hostname:
        attributes[semconv.SERVER_ADDRESS] = parts.hostname
        if port:
            attributes[semconv.SERVER_PORT] = port
    result = Endpoint(url, attributes)  # shared by every call: never mutated (a dict, for a fast update)
    if len(_endpoints) >= _ENDPOINT_CACHE_SIZE:
        _endpoints.clear()
    _endpoints[id(base_url)] = (base_url, result)
    return result


def request_extras(server: Mapping[str, Any], *, stream: bool, output_type: str | None) -> Mapping[str, Any]:
    """What an instrumentor adds to ``AICall(attributes=...)``: ``server.*``, and
    ``gen_ai.request.stream`` / ``gen_ai.output.type`` when they apply (the conventions leave both
    unset otherwise). The common call adds nothing and copies nothing."""
    if not stream and output_type is None:
        return server
    found = dict(server)
    if stream:
        found[semconv.GEN_AI_REQUEST_STREAM] = True
    if output_type is not None:
        found[semconv.GEN_AI_OUTPUT_TYPE] = output_type
    return found


class AICall:
    """The scope of one model call; use through ``ai_call()``. Record what comes back with
    ``record_response`` and, if known, ``record_confidence``.

    The hot path of every instrumented call: the span is started and made current directly (what
    ``start_as_current_span`` does, without its two generator context managers), and what comes
    back is set in one ``set_attributes``."""

    def __init__(
        self,
        *,
        model: str,
        provider: str,
        operation: str,
        conversation_id: str | None,
        settings: Mapping[str, Any] | None,
        input_messages: Sequence[Mapping[str, Any]] | None,
        system_instructions: str | Sequence[Mapping[str, Any]] | None,
        attributes: Mapping[str, Any] | None = None,
        tracer: trace.Tracer | None = None,
    ) -> None:
        """``tracer``: an instrumentor's own (from its ``tracer_provider``); default, the global one."""
        name, base = _name_and_base(operation, provider, model)
        found = base.copy()  # the cached dict itself is never handed out
        if attributes:
            found.update(attributes)  # what an instrumentor knows besides: server, stream, output type
        if conversation_id:
            found[semconv.GEN_AI_CONVERSATION_ID] = conversation_id
        if settings:
            _add_request_attributes(found, settings)
        # the environment is read only when there is content to capture
        if (input_messages is not None or system_instructions is not None) and content.capture_content():
            if input_messages is not None:
                found[semconv.GEN_AI_INPUT_MESSAGES] = content.messages_json(input_messages)
            if system_instructions is not None:
                parts = (
                    [{"type": "text", "content": system_instructions}]
                    if isinstance(system_instructions, str)
                    else system_instructions
                )
                found[semconv.GEN_AI_SYSTEM_INSTRUCTIONS] = content.messages_json(parts)
        self._name = name
        self._attributes = found
        self._tracer = tracer
        self._token: object = None
        self.span: Span = trace.INVALID_SPAN

    def __enter__(self) -> AICall:
        tracer = self._tracer or _tracer.get()
        self.span = tracer.start_span(self._name, kind=SpanKind.CLIENT, attributes=self._attributes)
        self._token = otel_context.attach(trace.set_span_in_context(self.span))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # What start_as_current_span(record_exception=True, set_status_on_exception=True) does on
        # exit, plus error.type: detach, then record an Exception (not a BaseException such as
        # KeyboardInterrupt or GeneratorExit) with an ERROR status, then end the span.
        span = self.span
        try:
            otel_context.detach(self._token)  # type: ignore[arg-type]
        finally:
            try:
                if exc is not None and span.is_recording():
                    span.set_attribute(semconv.ERROR_TYPE, type(exc).__qualname__)
                    if isinstance(exc, Exception):
                        span.record_exception(exc)
                        span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            finally:
                span.end()

    def record_response(
        self,
        *,
        model: str | None = None,
        response_id: str | None = None,
        finish_reasons: Iterable[str] | None = None,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        output_messages: Sequence[Mapping[str, Any]] | None = None,
        cache_read_input_tokens: int | None = None,
        cache_creation_input_tokens: int | None = None,
        time_to_first_chunk: float | None = None,
    ) -> None:
        """What the model answered. Unknown values are left out, never recorded as empty.
        ``input_tokens`` counts every input token, those read from or written to a prompt cache
        included (the GenAI conventions); the two cache counts are parts of it.
        ``time_to_first_chunk``: of a streamed answer, in seconds from the request."""
        # Each value of the type the SDK stores (a tuple for any sequence): they need no validation.
        attributes: dict[str, Any] = {}
        if model:
            attributes[semconv.GEN_AI_RESPONSE_MODEL] = str(model)
        if response_id:
            attributes[semconv.GEN_AI_RESPONSE_ID] = str(response_id)
        if finish_reasons:
            attributes[semconv.GEN_AI_RESPONSE_FINISH_REASONS] = tuple(map(str, finish_reasons))
        if input_tokens is not None:
            attributes[semconv.GEN_AI_USAGE_INPUT_TOKENS] = int(input_tokens)
        if output_tokens is not None:
            attributes[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] = int(output_tokens)
        if cache_read_input_tokens is not None:
            attributes[semconv.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] = int(cache_read_input_tokens)
        if cache_creation_input_tokens is not None:
            attributes[semconv.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS] = int(cache_creation_input_tokens)
        if time_to_first_chunk is not None:
            attributes[semconv.GEN_AI_TIME_TO_FIRST_CHUNK] = float(time_to_first_chunk)
        if output_messages is not None and content.capture_content():
            attributes[semconv.GEN_AI_OUTPUT_MESSAGES] = content.messages_json(output_messages)
        if attributes:
            _set_attributes(self.span, attributes)

    def record_confidence(
        self,
        score: float,
        label: str | None = None,
        explanation: str | None = None,
        *,
        name: str = "confidence",
    ) -> None:
        """A confidence score in [0, 1] for this call (see ``sessiontrace.ai.record_confidence``)."""
        record_confidence(score, label, explanation, name=name, span=self.span)

    def fail(self, error_type: str, message: str | None = None) -> None:
        """Mark the call failed without an exception (an HTTP error the caller handles itself)."""
        self.span.set_attribute(semconv.ERROR_TYPE, error_type)
        self.span.set_status(Status(StatusCode.ERROR, message))

    def start(self, context: Context | None = None) -> AICall:
        """Start the span without making it current, for an answer that outlives the calling frame
        (a stream the caller iterates later, maybe in another task): a context attached here could
        not be detached there. Make it current for a block with
        ``trace.use_span(call.span, end_on_exit=False)``; end it with ``end()``. ``context``: the
        parent's (default: the current one), for a caller that already holds it."""
        tracer = self._tracer or _tracer.get()
        self.span = tracer.start_span(self._name, context=context, kind=SpanKind.CLIENT, attributes=self._attributes)
        return self

    def end(self) -> None:
        """End a span begun with ``start()``."""
        self.span.end()


def _set_attributes(span: Span, attributes: dict[str, Any]) -> None:
    """``span.set_attributes(attributes)`` for values the SDK stores as they are (str, bool, int,
    float, tuples of them): put straight into its container when no span limit can bite, they skip
    the SDK's validation pass, about a microsecond per attribute on every call."""
    if not _attributes.add(span, attributes, replace=True):
        span.set_attributes(attributes)


def _add_request_attributes(attributes: dict[str, Any], settings: Mapping[str, Any]) -> None:
    """Add to ``attributes`` the GenAI request attributes of call settings (``temperature``,
    ``max_tokens``...)."""
    for key, value in settings.items():
        name = REQUEST_ATTRIBUTES.get(key)
        if name is None or value is None:
            continue
        if isinstance(value, str) and name == semconv.GEN_AI_REQUEST_STOP_SEQUENCES:
            value = [value]
        if isinstance(value, (list, tuple)):
            value = [str(item) for item in value]
        elif not isinstance(value, (bool, int, float, str)):
            continue  # a sentinel such as openai's NOT_GIVEN
        elif name == semconv.GEN_AI_REQUEST_TOP_K and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)  # a double in the conventions
        attributes[name] = value


def ai_call(
    *,
    model: str,
    provider: str = "local",
    operation: str = "chat",
    conversation_id: str | None = None,
    settings: Mapping[str, Any] | None = None,
    input_messages: Sequence[Mapping[str, Any]] | None = None,
    system_instructions: str | Sequence[Mapping[str, Any]] | None = None,
) -> AICall:
    """A span around one model call: ``with ai_call(model="claims-severity-nb") as call: ...``.

    ``provider`` is the ``gen_ai.provider.name`` (``openai``, ``anthropic``, or your own for a
    local model); ``settings`` are request parameters (temperature, max_tokens...).
    ``input_messages`` and ``system_instructions`` are recorded only when content capture is on.
    """
    return AICall(
        model=model,
        provider=provider,
        operation=operation,
        conversation_id=conversation_id,
        settings=settings,
        input_messages=input_messages,
        system_instructions=system_instructions,
    )
