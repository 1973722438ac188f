"""The official OpenAI SDK, instrumented: every chat completion and Responses API call becomes an
``AICall`` span (``chat {model}``, kind CLIENT, provider ``openai``, ``azure.ai.openai`` through an
Azure client, ``server.address``/``server.port`` from the client's base URL), a child of the current
span.

``OpenAIInstrumentor().instrument()`` wraps ``chat.completions.create`` and ``responses.create``
(and both ``parse``), sync and async. A streamed answer keeps its span open while the caller
iterates: the SDK's stream comes back inside a transparent proxy that notes the time to the first
chunk, gathers finish reasons, tool calls, usage and token log-probabilities, and ends the span
when the stream is exhausted, closed, left by its ``with`` block or garbage collected, whichever
comes first (an abandoned stream keeps what was seen so far); the stream helpers
(``chat.completions.stream()``, ``responses.stream()``) end it when they are closed. A failed call
ends its span with ``error.type`` (the HTTP status for an API error, else the exception's class) and
the exception propagates unchanged; so does a Responses stream ending with ``response.failed`` or
an ``error`` event, which the SDK does not raise (``error.type``: the error's code). Our own
bookkeeping never raises into the application: a failure is logged once and the call goes on
untraced.

Prompt and answer text is recorded only when content capture is on (``sessiontrace.ai.content``);
images and audio become size markers, never their bytes.

The session does not reach the provider through this module: the SDK injects no trace context
of its own. With ``OutboundPolicyInstrumentor`` installed (it patches the transports of
``httpx2``, which openai 2.x and later send with, and of ``httpx``), a request to a host on the
outbound allow-list (private networks by default, e.g. a local model server) carries the session
and one to any other host (``api.openai.com``) does not.
"""

from __future__ import annotations

import functools
import importlib
import json
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from types import FunctionType, TracebackType
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY, Context
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]
from wrapt import ObjectProxy, wrap_function_wrapper

from sessiontrace import semconv
from sessiontrace._log import logger, warn_once
from sessiontrace._tracer import AI_TRACER_NAME, given_tracer
from sessiontrace.ai import content
from sessiontrace.ai.call import AICall, endpoint, request_extras
from sessiontrace.ai.confidence import confidence_from_logprobs

PROVIDER = "openai"
AZURE_PROVIDER = "azure.ai.openai"
CONFIDENCE_EXPLANATION = "geometric mean of token probabilities from logprobs"

Message = dict[str, Any]
Part = dict[str, Any]


# --- reading what the caller sent (dicts or models; ``_get``) and what the SDK answered (its models;
# plain ``getattr``, the per-call and per-chunk path) ------------------------------------------------------
def _get(value: Any, key: str) -> Any:
    if value is None:  # an argument not given: skip the slow Mapping check below
        return None
    if isinstance(value, dict):
        return value.get(key)
    found = getattr(value, key, None)
    if found is None and isinstance(value, Mapping):  # the slow ABC check only when it can matter
        return value.get(key)
    return found


def _cached_tokens(usage: Any, details: str) -> int | None:
    """Input tokens the provider served from its prompt cache (``usage.<details>.cached_tokens``):
    part of the input tokens, as the conventions count them."""
    cached = getattr(getattr(usage, details, None), "cached_tokens", None)
    return cached if isinstance(cached, int) and not isinstance(cached, bool) else None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _listed(value: Any) -> Sequence[Any]:
    """Only lists and tuples: iterating a generator the caller passed would consume it before
    the SDK sends it."""
    return value if isinstance(value, (list, tuple)) else ()


def _arguments(raw: Any) -> Any:
    """Tool call arguments as an object when they are JSON (semconv), else as sent."""
    if isinstance(raw, str):
        try:
            return json.loads(raw)
        except (ValueError, RecursionError):
            return raw
    return raw


def _tool_call(call_id: Any, name: Any, arguments: Any) -> Part:
    return {"type": "tool_call", "id": call_id, "name": name, "arguments": _arguments(arguments)}


def _binary_part(modality: str, media_type: str, data: Any, *, base64: bool = True) -> Part:
    """A marker instead of inline bytes: their size, computed from the base64 without decoding."""
    if isinstance(data, str):
        size = len(data.rstrip("=")) * 3 // 4 if base64 else len(data.encode())
    else:
        size = len(data) if isinstance(data, (bytes, bytearray)) else 0
    return {"type": "blob", "modality": modality, "mime_type": media_type, "content": f"[{media_type} {size} bytes]"}


def _image_part(url: Any) -> Part:
    if isinstance(url, str) and url.startswith("data:"):
        header, _, data = url.partition(",")
        media_type = header[5:].split(";")[0] or "application/octet-stream"
        return _binary_part("image", media_type, data, base64=header.endswith(";base64"))
    return {"type": "uri", "modality": "image", "uri": url}


def _content_part(part: Any) -> Part:
    """One part of a message's content (Chat Completions or Responses shape) as a semconv part."""
    if isinstance(part, str):
        return {"type": "text", "content": part}
    kind = _get(part, "type")
    if kind in ("text", "input_text", "output_text"):
        return {"type": "text", "content": _get(part, "text")}
    if kind == "refusal":
        return {"type": "refusal", "content": _get(part, "refusal")}
    if kind == "image_url":
        return _image_part(_get(_get(part, "image_url"), "url"))
    if kind == "input_image":
        url = _get(part, "image_url")
        return _image_part(url) if url else {"type": "file", "modality": "image", "file_id": _get(part, "file_id")}
    if kind == "input_audio":
        audio = _get(part, "input_audio")
        return _binary_part("audio", f"audio/{_get(audio, 'format') or 'unknown'}", _get(audio, "data"))
    if kind in ("file", "input_file"):
        file = _get(part, "file") if kind == "file" else part
        if _get(file, "file_data"):
            return _binary_part("file", "application/octet-stream", _get(file, "file_data"))
        return {"type": "file", "file_id": _get(file, "file_id"), "filename": _get(file, "filename")}
    return {"type": str(kind or "unknown"), "content": part}  # a GenericPart; messages_json makes it safe


def _parts(value: Any) -> list[Part]:
    if value is None:
        return []
    if isinstance(value, str):
        return [{"type": "text", "content": value}]
    if isinstance(value, (list, tuple)):
        return [_content_part(part) for part in value]
    return [_content_part(value)]


def _role(value: Any) -> str:
    role = _str(value) or "user"
    return "system" if role == "developer" else role


# --- Chat Completions ----------------------------------------------------------------------------------
def _chat_input(messages: Any) -> list[Message]:
    result: list[Message] = []
    for message in _listed(messages):
        role = _role(_get(message, "role"))
        if role in ("tool", "function"):
            response = {"type": "tool_call_response", "id": _get(message, "tool_call_id")}
            result.append({"role": "tool", "parts": [{**response, "response": _get(message, "content")}]})
            continue
        parts = _parts(_get(message, "content"))
        parts.extend(_chat_tool_calls(message))
        result.append({"role": role, "parts": parts})
    return result


def _chat_tool_calls(message: Any) -> list[Part]:
    parts = []
    for tool_call in _listed(_get(message, "tool_calls")):
        function = _get(tool_call, "function")
        parts.append(_tool_call(_get(tool_call, "id"), _get(function, "name"), _get(function, "arguments")))
    function_call = _get(message, "function_call")  # the deprecated single-function form
    if function_call is not None:
        parts.append(_tool_call(None, _get(function_call, "name"), _get(function_call, "arguments")))
    return parts


def _chat_output(choice: Any) -> Message:
    message = _get(choice, "message")
    parts = _parts(_get(message, "content"))
    refusal = _get(message, "refusal")
    if refusal:
        parts.append({"type": "refusal", "content": refusal})
    parts.extend(_chat_tool_calls(message))
    audio = _get(message, "audio")
    if audio is not None:
        parts.append(_binary_part("audio", "audio/unknown", _get(audio, "data")))
    output: Message = {"role": _str(_get(message, "role")) or "assistant", "parts": parts}
    if _get(choice, "finish_reason"):
        output["finish_reason"] = _get(choice, "finish_reason")
    return output


def _token_logprobs(tokens: Any) -> list[float]:
    return [
        value for value in (getattr(token, "logprob", None) for token in _listed(tokens)) if isinstance(value, float)
    ]


def _record_confidence(call: AICall, logprobs: list[float]) -> None:
    score = confidence_from_logprobs(logprobs)
    if score is not None:
        call.record_confidence(score, explanation=CONFIDENCE_EXPLANATION, name="confidence")


_provider_tracer: trace.Tracer | None = None
"""The tracer of ``instrument(tracer_provider=...)``; None: the global provider's."""
_azure_clients: tuple[type, ...] = ()
"""``openai``'s Azure client classes, found by ``instrument()``: their calls are ``azure.ai.openai``."""
_providers: dict[type, str] = {}
"""Provider per client class: an ``isinstance`` against the Azure classes once per class."""


def _target(instance: Any) -> tuple[str, Mapping[str, Any]]:
    """The provider and the ``server.*`` attributes of the client behind an SDK resource, both
    computed once (per client class, per base URL) and looked up after."""
    client = getattr(instance, "_client", None)
    # _base_url: the public property imports a module on every read (openai 3.x), ~2 us a call
    found = endpoint(getattr(client, "_base_url", None) or getattr(client, "base_url", None))
    kind = type(client)
    provider = _providers.get(kind)
    if provider is None:
        provider = _providers[kind] = AZURE_PROVIDER if issubclass(kind, _azure_clients) else PROVIDER
    return provider, found.attributes if found is not None else {}


def _output_type(kind: Any) -> str | None:
    """``gen_ai.output.type`` of a requested format: a JSON object or schema, or plain text."""
    if kind in ("json_object", "json_schema"):
        return "json"
    return "text" if kind == "text" else None


class _Api:
    """How one OpenAI endpoint maps onto an ``AICall``: request, response, stream."""

    def begin(self, kwargs: Mapping[str, Any], capture: bool, provider: str, server: Mapping[str, Any]) -> AICall:
        raise NotImplementedError

    def record(self, call: AICall, response: Any, capture: bool) -> None:
        raise NotImplementedError

    def stream_scope(self, call: AICall, started: float, capture: bool) -> _StreamScope:
        raise NotImplementedError


def _chat_output_type(response_format: Any) -> str | None:
    """``gen_ai.output.type`` of a chat ``response_format``: parse() takes a pydantic model class
    (structured output, JSON), create() a format with a type."""
    return "json" if isinstance(response_format, type) else _output_type(_get(response_format, "type"))


class _Chat(_Api):
    def begin(self, kwargs: Mapping[str, Any], capture: bool, provider: str, server: Mapping[str, Any]) -> AICall:
        response_format = kwargs.get("response_format")
        output_type = None if response_format is None else _chat_output_type(response_format)
        return AICall(
            model=_str(kwargs.get("model")) or "unknown",
            provider=provider,
            operation="chat",
            conversation_id=None,
            settings=kwargs,  # AICall picks the settings it knows and skips NOT_GIVEN
            input_messages=_chat_input(kwargs.get("messages")) if capture else None,
            system_instructions=None,  # OpenAI sends them as messages; they stay in the input messages
            attributes=request_extras(server, stream=kwargs.get("stream") is True, output_type=output_type),
            tracer=_provider_tracer,
        )

    def record(self, call: AICall, response: Any, capture: bool) -> None:
        choices = _listed(getattr(response, "choices", None))
        usage = getattr(response, "usage", None)
        call.record_response(
            model=_str(getattr(response, "model", None)),
            response_id=_str(getattr(response, "id", None)),
            finish_reasons=[reason for choice in choices if (reason := getattr(choice, "finish_reason", None))],
            input_tokens=getattr(usage, "prompt_tokens", None),
            output_tokens=getattr(usage, "completion_tokens", None),
            cache_read_input_tokens=_cached_tokens(usage, "prompt_tokens_details"),
            output_messages=[_chat_output(choice) for choice in choices] if capture else None,
        )
        logprobs = getattr(choices[0], "logprobs", None) if choices else None
        if logprobs is not None:  # asked for with logprobs=True
            _record_confidence(call, _token_logprobs(getattr(logprobs, "content", None)))

    def stream_scope(self, call: AICall, started: float, capture: bool) -> _StreamScope:
        return _ChatStream(call, started, capture)


# --- Responses API -------------------------------------------------------------------------------------
def _responses_input(value: Any) -> list[Message]:
    if isinstance(value, str):
        return [content.text_message("user", value)]
    result: list[Message] = []
    for item in _listed(value):
        kind = _get(item, "type")
        if kind == "function_call":
            result.append(
                {
                    "role": "assistant",
                    "parts": [_tool_call(_get(item, "call_id"), _get(item, "name"), _get(item, "arguments"))],
                }
            )
        elif kind == "function_call_output":
            response = {"type": "tool_call_response", "id": _get(item, "call_id"), "response": _get(item, "output")}
            result.append({"role": "tool", "parts": [response]})
        elif kind in (None, "message"):
            result.append({"role": _role(_get(item, "role")), "parts": _parts(_get(item, "content"))})
        else:
            result.append({"role": "user", "parts": [_content_part(item)]})
    return result


def _responses_output(response: Any, finish_reason: str | None) -> list[Message]:
    parts: list[Part] = []
    for item in _listed(getattr(response, "output", None)):
        kind = getattr(item, "type", None)
        if kind == "message":
            parts.extend(_parts(getattr(item, "content", None)))
        elif kind == "function_call":
            parts.append(
                _tool_call(
                    getattr(item, "call_id", None), getattr(item, "name", None), getattr(item, "arguments", None)
                )
            )
    message: Message = {"role": "assistant", "parts": parts}
    if finish_reason:
        message["finish_reason"] = finish_reason
    return [message]


def _responses_finish_reason(response: Any) -> str | None:
    status = getattr(response, "status", None)
    if status == "completed":
        calls = any(
            getattr(item, "type", None) == "function_call" for item in _listed(getattr(response, "output", None))
        )
        return "tool_calls" if calls else "stop"
    if status == "incomplete":
        return _str(getattr(getattr(response, "incomplete_details", None), "reason", None)) or "incomplete"
    return _str(status) if status in ("failed", "cancelled") else None


def _responses_logprobs(response: Any) -> list[float]:
    values: list[float] = []
    for item in _listed(getattr(response, "output", None)):
        if getattr(item, "type", None) == "message":
            for part in _listed(getattr(item, "content", None)):
                values.extend(_token_logprobs(getattr(part, "logprobs", None)))
    return values


def _conversation_id(conversation: Any) -> str | None:
    """The Responses API ``conversation``: its id, or an object with one."""
    return _str(conversation) or _str(_get(conversation, "id"))


class _Responses(_Api):
    def begin(self, kwargs: Mapping[str, Any], capture: bool, provider: str, server: Mapping[str, Any]) -> AICall:
        settings = {key: kwargs.get(key) for key in ("temperature", "top_p")}
        settings["max_tokens"] = kwargs.get("max_output_tokens")
        instructions = kwargs.get("instructions")
        # parse() takes a pydantic model class as text_format; create() a format in text.format
        text_format = kwargs.get("text_format")
        output_type = (
            "json" if isinstance(text_format, type) else _output_type(_get(_get(kwargs.get("text"), "format"), "type"))
        )
        return AICall(
            model=_str(kwargs.get("model")) or "unknown",
            provider=provider,
            operation="chat",
            conversation_id=_conversation_id(kwargs.get("conversation")),
            settings=settings,
            input_messages=_responses_input(kwargs.get("input")) if capture else None,
            system_instructions=instructions if capture and isinstance(instructions, str) else None,
            attributes=request_extras(server, stream=kwargs.get("stream") is True, output_type=output_type),
            tracer=_provider_tracer,
        )

    def record(self, call: AICall, response: Any, capture: bool, *, time_to_first_chunk: float | None = None) -> None:
        usage = getattr(response, "usage", None)
        finish_reason = _responses_finish_reason(response)
        call.record_response(
            model=_str(getattr(response, "model", None)),
            response_id=_str(getattr(response, "id", None)),
            finish_reasons=[finish_reason] if finish_reason else None,
            input_tokens=getattr(usage, "input_tokens", None),
            output_tokens=getattr(usage, "output_tokens", None),
            cache_read_input_tokens=_cached_tokens(usage, "input_tokens_details"),
            output_messages=_responses_output(response, finish_reason) if capture else None,
            time_to_first_chunk=time_to_first_chunk,
        )
        _record_confidence(call, _responses_logprobs(response))
        if getattr(response, "status", None) == "failed":  # a 200 with a failed response: the SDK raises nothing
            error = getattr(response, "error", None)
            call.fail(_str(getattr(error, "code", None)) or "response.failed", _str(getattr(error, "message", None)))

    def stream_scope(self, call: AICall, started: float, capture: bool) -> _StreamScope:
        return _ResponsesStream(call, started, capture)


# --- streams ---------------------------------------------------------------------------------------------
class _StreamScope:
    """What a stream has shown so far; ends the span exactly once, on any path. The time to the
    first chunk is noted as it comes and recorded with the rest of the answer."""

    __slots__ = ("call", "capture", "done", "first_chunk", "started")

    def __init__(self, call: AICall, started: float, capture: bool) -> None:
        self.call = call
        self.started = started
        self.capture = capture
        self.first_chunk: float | None = None  # seconds from the request to the first chunk
        self.done = False

    def add(self, chunk: Any) -> None:
        if self.first_chunk is None:
            self.first_chunk = time.perf_counter() - self.started
        try:
            self.absorb(chunk)
        except Exception:
            _bookkeeping_failed()

    def finish(self, error: BaseException | None = None) -> None:
        if self.done:
            return
        self.done = True
        try:
            self.record()
        except Exception:
            _bookkeeping_failed()
        if error is None:
            _end(self.call)
        else:
            _end_with_error(self.call, error)

    def absorb(self, chunk: Any) -> None:
        raise NotImplementedError

    def record(self) -> None:
        raise NotImplementedError


class _ChatStream(_StreamScope):
    __slots__ = ("finish_reasons", "logprobs", "model", "response_id", "texts", "tools", "usage")

    def __init__(self, call: AICall, started: float, capture: bool) -> None:
        super().__init__(call, started, capture)
        self.model: str | None = None
        self.response_id: str | None = None
        self.usage: Any = None
        self.finish_reasons: dict[int, str] = {}
        self.logprobs: list[float] = []
        self.texts: dict[int, list[str]] = {}
        self.tools: dict[int, dict[int, dict[str, Any]]] = {}  # choice index -> tool call index -> parts

    def absorb(self, chunk: Any) -> None:
        if self.response_id is None:
            self.response_id = _str(getattr(chunk, "id", None))
            self.model = _str(getattr(chunk, "model", None))
        usage = getattr(chunk, "usage", None)
        if usage is not None:
            self.usage = usage  # sent in the last chunk when stream_options={"include_usage": True}
        for choice in getattr(chunk, "choices", None) or ():
            # most chunks carry only text, which matters only when content is captured
            if self.capture or getattr(choice, "finish_reason", None) or getattr(choice, "logprobs", None) is not None:
                self._absorb_choice(choice)

    def _absorb_choice(self, choice: Any) -> None:
        index = getattr(choice, "index", None) or 0
        reason = getattr(choice, "finish_reason", None)
        if reason:
            self.finish_reasons[index] = reason
        if index == 0:
            logprobs = getattr(choice, "logprobs", None)
            if logprobs is not None:
                self.logprobs.extend(_token_logprobs(getattr(logprobs, "content", None)))
        if self.capture:
            self._absorb_delta(index, getattr(choice, "delta", None))

    def _absorb_delta(self, index: int, delta: Any) -> None:
        text = getattr(delta, "content", None)
        if text:
            self.texts.setdefault(index, []).append(text)
        for tool_call in getattr(delta, "tool_calls", None) or ():
            calls = self.tools.setdefault(index, {})
            seen = calls.setdefault(getattr(tool_call, "index", None) or 0, {"id": None, "name": None, "arguments": []})
            function = getattr(tool_call, "function", None)
            seen["id"] = seen["id"] or getattr(tool_call, "id", None)
            seen["name"] = seen["name"] or getattr(function, "name", None)
            if getattr(function, "arguments", None):
                seen["arguments"].append(getattr(function, "arguments", None))

    def record(self) -> None:
        messages = None
        if self.capture:
            messages = []
            for index in sorted(self.texts.keys() | self.tools.keys() | self.finish_reasons.keys()):
                parts: list[Part] = (
                    [{"type": "text", "content": "".join(self.texts[index])}] if index in self.texts else []
                )
                for _, seen in sorted(self.tools.get(index, {}).items()):
                    parts.append(_tool_call(seen["id"], seen["name"], "".join(seen["arguments"])))
                message: Message = {"role": "assistant", "parts": parts}
                if index in self.finish_reasons:
                    message["finish_reason"] = self.finish_reasons[index]
                messages.append(message)
        self.call.record_response(
            model=self.model,
            response_id=self.response_id,
            finish_reasons=[reason for _, reason in sorted(self.finish_reasons.items())],
            input_tokens=getattr(self.usage, "prompt_tokens", None),
            output_tokens=getattr(self.usage, "completion_tokens", None),
            cache_read_input_tokens=_cached_tokens(self.usage, "prompt_tokens_details"),
            output_messages=messages,
            time_to_first_chunk=self.first_chunk,
        )
        if self.logprobs:  # asked for with logprobs=True
            _record_confidence(self.call, self.logprobs)


class _ResponsesStream(_StreamScope):
    """Responses API events: ``response.created`` names the response, the terminal event
    (``response.completed``, ``.incomplete`` or ``.failed``) carries it whole. A ``response.failed``
    or an ``error`` event ends the stream without an exception: the span fails all the same."""

    __slots__ = ("error", "response", "terminal")

    def __init__(self, call: AICall, started: float, capture: bool) -> None:
        super().__init__(call, started, capture)
        self.response: Any = None
        self.terminal = False
        self.error: tuple[str, str | None] | None = None

    def absorb(self, chunk: Any) -> None:
        if getattr(chunk, "type", None) == "error":
            code = _str(getattr(chunk, "code", None)) or "error"
            self.error = (code, _str(getattr(chunk, "message", None)))
            return
        response = getattr(chunk, "response", None)
        if response is not None:
            self.response = response
            self.terminal = getattr(chunk, "type", None) in (
                "response.completed",
                "response.incomplete",
                "response.failed",
            )

    def record(self) -> None:
        if self.terminal:  # fails the call on response.failed
            _RESPONSES.record(self.call, self.response, self.capture, time_to_first_chunk=self.first_chunk)
        else:  # abandoned: only what the first event told, if it came
            self.call.record_response(
                model=_str(getattr(self.response, "model", None)),
                response_id=_str(getattr(self.response, "id", None)),
                time_to_first_chunk=self.first_chunk,
            )
        if self.error is not None:
            self.call.fail(*self.error)


class _TracedStream(ObjectProxy[Any]):
    """The SDK's ``Stream``, as it was (iteration, ``with``, ``close()``, attributes), ending the
    call's span when it ends."""

    def __init__(self, stream: Any, scope: _StreamScope) -> None:
        super().__init__(stream)
        self._self_scope = scope

    def __iter__(self) -> _TracedStream:
        return self

    def __next__(self) -> Any:
        try:
            chunk = self.__wrapped__.__next__()
        except StopIteration:
            self._self_scope.finish()
            raise
        except BaseException as error:
            self._self_scope.finish(error)
            raise
        self._self_scope.add(chunk)
        return chunk

    def __enter__(self) -> _TracedStream:
        self.__wrapped__.__enter__()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> Any:
        try:
            return self.__wrapped__.__exit__(exc_type, exc, tb)
        finally:
            self._self_scope.finish()

    def close(self) -> None:
        try:
            self.__wrapped__.close()
        finally:
            self._self_scope.finish()

    def __del__(self) -> None:
        scope = getattr(self, "_self_scope", None)  # None if __init__ never finished
        if scope is not None:
            scope.finish()


class _TracedAsyncStream(ObjectProxy[Any]):
    """The SDK's ``AsyncStream``, as it was, ending the call's span when it ends."""

    def __init__(self, stream: Any, scope: _StreamScope) -> None:
        super().__init__(stream)
        self._self_scope = scope

    def __aiter__(self) -> _TracedAsyncStream:
        return self

    async def __anext__(self) -> Any:
        try:
            chunk = await self.__wrapped__.__anext__()
        except StopAsyncIteration:
            self._self_scope.finish()
            raise
        except BaseException as error:
            self._self_scope.finish(error)
            raise
        self._self_scope.add(chunk)
        return chunk

    async def __aenter__(self) -> _TracedAsyncStream:
        await self.__wrapped__.__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> Any:
        try:
            return await self.__wrapped__.__aexit__(exc_type, exc, tb)
        finally:
            self._self_scope.finish()

    async def close(self) -> None:
        try:
            await self.__wrapped__.close()
        finally:
            self._self_scope.finish()

    def __del__(self) -> None:
        scope = getattr(self, "_self_scope", None)  # None if __init__ never finished
        if scope is not None:
            scope.finish()


# --- span bookkeeping: never raises --------------------------------------------------------------------
def _bookkeeping_failed() -> None:
    warn_once("openai-bookkeeping", "sessiontrace: could not record an OpenAI call; the call itself is unaffected")
    logger.debug("sessiontrace: OpenAI bookkeeping failed", exc_info=True)


def _begin(api: _Api, instance: Any, kwargs: Mapping[str, Any], capture: bool, context: Context) -> AICall | None:
    """The call's span, started; None when it goes untraced (instrumentation suppressed, or our
    bookkeeping failed)."""
    if context.get(_SUPPRESS_INSTRUMENTATION_KEY):  # suppress_instrumentation(), as every instrumentor honours
        return None
    try:
        return api.begin(kwargs, capture, *_target(instance)).start(context)
    except Exception:
        _bookkeeping_failed()
        return None


def _end(call: AICall) -> None:
    try:
        call.end()
    except Exception:
        _bookkeeping_failed()


def _end_with_error(call: AICall, error: BaseException) -> None:
    try:
        from openai import APIStatusError

        # semconv: an HTTP error's type is its status code; anything else, the exception's class
        status = error.status_code if isinstance(error, APIStatusError) else None
        error_type = str(status) if status else type(error).__qualname__
        if isinstance(error, Exception):
            call.span.record_exception(error)
            call.fail(error_type, f"{type(error).__name__}: {error}")
        else:  # cancelled or interrupted: not a failure of the call (as OpenTelemetry's use_span sees it)
            call.span.set_attribute(semconv.ERROR_TYPE, error_type)
    except Exception:
        _bookkeeping_failed()
    _end(call)


def _answer(api: _Api, call: AICall, result: Any, started: float, capture: bool, stream_type: type, proxy: type) -> Any:
    """A stream comes back wrapped (its span ends with it); anything else is recorded at once."""
    try:
        if isinstance(result, stream_type):
            return proxy(result, api.stream_scope(call, started, capture))
        api.record(call, result, capture)  # a raw response (with_raw_response) has no fields: nothing recorded
    except Exception:
        _bookkeeping_failed()
    _end(call)
    return result


# The traced methods are plain functions put in the SDK class in place of its own, not ``wrapt``
# wrappers: they bind to the instance as the method did, where a ``wrapt`` wrapper makes a bound
# wrapper object on every call (a few microseconds, as much as the rest of our bookkeeping).
def _unbound(original: Any) -> Callable[..., Any]:
    """``original`` (what the class held) as a function of the instance and the arguments: itself
    when it is a plain function; else bound at each call, as attribute access would, since another
    library's wrapper around the method (installed before us) expects the instance it is bound to."""
    if type(original) is FunctionType:  # not isinstance: a wrapt proxy passes for what it wraps
        return original
    if getattr(type(original), "__get__", None) is None:  # no descriptor (a test's Mock): not bound

        def call_unbound(self: Any, *args: Any, **kwargs: Any) -> Any:
            return original(*args, **kwargs)

        return call_unbound

    def call_bound(self: Any, *args: Any, **kwargs: Any) -> Any:
        return original.__get__(self, type(self))(*args, **kwargs)

    return call_bound


_retired: set[Callable[..., Any]] = set()
"""Our methods that ``uninstrument()`` could not take out of their class, because another library
wrapped them since (taking ours out would take theirs out too): they only call the original."""


def _traced_method(original: Any, api: _Api, stream_type: type) -> Callable[..., Any]:
    call_original = _unbound(original)

    @functools.wraps(original)
    def traced(self: Any, *args: Any, **kwargs: Any) -> Any:
        if traced in _retired:
            return call_original(self, *args, **kwargs)
        capture = content.capture_content()
        context = otel_context.get_current()  # looked up once: the span's parent, then its own
        call = _begin(api, self, kwargs, capture, context)
        if call is None:
            return call_original(self, *args, **kwargs)
        started = time.perf_counter()
        try:
            # use_span(end_on_exit=False, record_exception=False, set_status_on_exception=False),
            # without its generator: the span is current for the SDK call, then detached.
            token = otel_context.attach(trace.set_span_in_context(call.span, context))
            try:
                result = call_original(self, *args, **kwargs)
            finally:
                otel_context.detach(token)
        except BaseException as error:
            _end_with_error(call, error)
            raise
        return _answer(api, call, result, started, capture, stream_type, _TracedStream)

    return traced


def _traced_async_method(original: Any, api: _Api, stream_type: type) -> Callable[..., Any]:
    call_original = _unbound(original)

    @functools.wraps(original)
    async def traced(self: Any, *args: Any, **kwargs: Any) -> Any:
        if traced in _retired:
            return await call_original(self, *args, **kwargs)
        capture = content.capture_content()
        context = otel_context.get_current()
        call = _begin(api, self, kwargs, capture, context)
        if call is None:
            return await call_original(self, *args, **kwargs)
        started = time.perf_counter()
        try:
            token = otel_context.attach(trace.set_span_in_context(call.span, context))  # as in the sync method
            try:
                result = await call_original(self, *args, **kwargs)
            finally:
                otel_context.detach(token)
        except BaseException as error:
            _end_with_error(call, error)
            raise
        return _answer(api, call, result, started, capture, stream_type, _TracedAsyncStream)

    return traced


# --- the instrumentor ------------------------------------------------------------------------------------
_CHAT = _Chat()
_RESPONSES = _Responses()

# (module, class, method, api, is async, warn when missing)
_TARGETS: tuple[tuple[str, str, str, _Api, bool, bool], ...] = (
    ("openai.resources.chat.completions", "Completions", "create", _CHAT, False, True),
    ("openai.resources.chat.completions", "AsyncCompletions", "create", _CHAT, True, True),
    ("openai.resources.chat.completions", "Completions", "parse", _CHAT, False, False),
    ("openai.resources.chat.completions", "AsyncCompletions", "parse", _CHAT, True, False),
    ("openai.resources.responses", "Responses", "create", _RESPONSES, False, True),
    ("openai.resources.responses", "AsyncResponses", "create", _RESPONSES, True, True),
    ("openai.resources.responses", "Responses", "parse", _RESPONSES, False, False),
    ("openai.resources.responses", "AsyncResponses", "parse", _RESPONSES, True, False),
)

# The stream helpers (``chat.completions.stream()``, ``responses.stream()``) read our proxy but
# close only its HTTP response, so their close (and the ``with`` exit, which calls it) ends the span.
# (module, class, is async); left alone when missing.
_HELPERS: tuple[tuple[str, str, bool], ...] = (
    ("openai.lib.streaming.chat._completions", "ChatCompletionStream", False),
    ("openai.lib.streaming.chat._completions", "AsyncChatCompletionStream", True),
    ("openai.lib.streaming.responses._responses", "ResponseStream", False),
    ("openai.lib.streaming.responses._responses", "AsyncResponseStream", True),
)


def _finish_helper(helper: Any) -> None:
    try:
        raw = getattr(helper, "_raw_stream", None)  # our proxy when the helper's create() was traced
        if isinstance(raw, (_TracedStream, _TracedAsyncStream)):
            raw._self_scope.finish()
    except Exception:
        _bookkeeping_failed()


def _close_helper(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    try:
        return wrapped(*args, **kwargs)
    finally:
        _finish_helper(instance)


async def _close_helper_async(
    wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    try:
        return await wrapped(*args, **kwargs)
    finally:
        _finish_helper(instance)


_patched: list[tuple[type, str, Any, Any]] = []
"""What ``instrument()`` replaced: (class, name, ours, the class's own attribute before), for
``uninstrument()`` to put back."""


def _find(module: str, owner: str, method: str) -> type | None:
    """The SDK class ``module.owner`` when it defines ``method`` (maybe wrapped by another library)."""
    try:
        cls = getattr(importlib.import_module(module), owner)
    except (ImportError, AttributeError):
        return None
    return cls if isinstance(cls, type) and callable(cls.__dict__.get(method)) else None


class OpenAIInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Traces the official ``openai`` SDK's chat completions and Responses API calls as AI spans.

    ``OpenAIInstrumentor().instrument()`` once at startup (or zero-code, through the
    ``opentelemetry_instrumentor`` entry point); ``uninstrument()`` restores the SDK. A method
    this SDK version lacks is reported once and left alone."""

    def instrumentation_dependencies(self) -> Collection[str]:
        return ("openai >= 1.40",)

    def _instrument(self, **kwargs: Any) -> None:
        import openai

        global _azure_clients, _provider_tracer
        _provider_tracer = given_tracer(
            AI_TRACER_NAME, kwargs.get("tracer_provider")
        )  # refused before anything changes
        _azure_clients = tuple(
            cls for cls in (getattr(openai, "AzureOpenAI", None), getattr(openai, "AsyncAzureOpenAI", None)) if cls
        )
        _providers.clear()
        patched: list[tuple[type, str, Any, Any]] = []
        for module, owner, method, api, is_async, required in _TARGETS:
            cls = _find(module, owner, method)
            if cls is None:
                if required:
                    warn_once(
                        f"openai-missing-{module}.{owner}.{method}",
                        "sessiontrace: openai %s has no %s.%s.%s; those calls are not traced",
                        getattr(openai, "__version__", "?"),
                        module,
                        owner,
                        method,
                    )
                continue
            original = cls.__dict__[method]
            if is_async:
                setattr(cls, method, _traced_async_method(original, api, openai.AsyncStream))
            else:
                setattr(cls, method, _traced_method(original, api, openai.Stream))
            patched.append((cls, method, cls.__dict__[method], original))
        for module, owner, is_async in _HELPERS:
            cls = _find(module, owner, "close")
            if cls is not None:
                original = cls.__dict__["close"]
                wrap_function_wrapper(cls, "close", _close_helper_async if is_async else _close_helper)
                patched.append((cls, "close", cls.__dict__["close"], original))
        _patched[:] = patched

    def _uninstrument(self, **kwargs: Any) -> None:
        global _provider_tracer
        _provider_tracer = None
        for cls, method, ours, original in _patched:
            if cls.__dict__.get(method) is ours:
                setattr(cls, method, original)
            else:  # wrapped by another library since: ours stays under theirs, and passes calls through
                _retired.add(ours)
        _patched.clear()


__all__: Sequence[str] = ["OpenAIInstrumentor"]
