"""Calls through the official ``anthropic`` SDK as GenAI spans.

``AnthropicInstrumentor`` wraps ``Messages.create`` and ``AsyncMessages.create`` (plain and
``stream=True``), ``messages.parse(...)`` and the ``messages.stream(...)`` helper, and the same of
``client.beta.messages`` where the SDK has them. Each call becomes an ``AICall`` span
(``chat {model}``, kind CLIENT, provider ``anthropic``), a child of whatever span is current, so it
carries the session like every other span.

A streamed answer outlives the call that asked for it: the SDK returns a ``Stream`` the caller reads
later, maybe in another task. Its span is started without being made current (``AICall.start()``),
made current only around the SDK call itself, and ended by whatever finishes the stream: its last
event, an error, ``close()``, the end of a ``with`` block, or the garbage collector. Like the SDK's
stream, it can be read in several loops (a peek with ``next(iter(stream))``, then a ``for``): leaving
one loop does not end it.

The SDK (2.x) also emits a span of its own per API call (``anthropic.messages.create``, HTTP detail);
it starts inside ours, so it shows up as our child. It also injects the trace context, baggage
included, into its requests itself, through the global propagator: we name the destination around
the call, so the outbound host policy decides whether the session travels to the provider even
where ``OutboundPolicyInstrumentor`` (which patches ``httpx2``'s transport too) is not installed.
"""

from __future__ import annotations

import importlib
import json
import threading
import time
import weakref
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]
from opentelemetry.instrumentation.utils import is_instrumentation_enabled, unwrap
from wrapt import ObjectProxy, wrap_function_wrapper

from sessiontrace import semconv
from sessiontrace._log import logger, warn_once
from sessiontrace._tracer import AI_TRACER_NAME, given_tracer
from sessiontrace.ai import content
from sessiontrace.ai.call import AICall, Endpoint, endpoint, request_extras
from sessiontrace.propagation import outbound_to

PROVIDER = "anthropic"
OPERATION = "chat"

_MODULE = "anthropic.resources.messages"
_BETA_MODULE = "anthropic.resources.beta.messages"
_provider_tracer: trace.Tracer | None = None
"""The tracer of ``instrument(tracer_provider=...)``; None: the global provider's."""

# Request settings with a GenAI attribute (see ``sessiontrace.ai.call.REQUEST_ATTRIBUTES``).
_SETTINGS = ("max_tokens", "temperature", "top_p", "top_k", "stop_sequences")


# --- the instrumentor --------------------------------------------------------------------------------------
class AnthropicInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Turns ``anthropic`` Messages calls into GenAI spans. ``instrument()`` / ``uninstrument()``.

    A method missing from the installed SDK is reported once and left alone; the others are still
    wrapped. Prompt and answer content is recorded only when content capture is on."""

    def instrumentation_dependencies(self) -> Collection[str]:
        return ("anthropic >= 0.40",)

    def _instrument(self, **kwargs: Any) -> None:
        global _provider_tracer
        _provider_tracer = given_tracer(
            AI_TRACER_NAME, kwargs.get("tracer_provider")
        )  # refused before anything changes
        try:
            importlib.import_module(_MODULE)
        except ImportError as error:
            warn_once("anthropic:import", "sessiontrace: anthropic is not instrumented: %s", error)
            return
        for module, owner_name, method, wrapper, required in _TARGETS:
            owner = _owner(module, owner_name)
            if owner is None or not callable(getattr(owner, method, None)):
                if required:
                    warn_once(
                        f"anthropic:{owner_name}.{method}",
                        "sessiontrace: this anthropic SDK has no %s.%s; calls through it are not traced",
                        owner_name,
                        method,
                    )
                continue
            wrap_function_wrapper(module, f"{owner_name}.{method}", wrapper)

    def _uninstrument(self, **kwargs: Any) -> None:
        # BaseInstrumentor is a singleton whose __init__ runs again on every construction: nothing
        # is kept on it, and unwrap leaves a method that was never wrapped alone.
        global _provider_tracer
        _provider_tracer = None
        for module, owner_name, method, _, _ in _TARGETS:
            owner = _owner(module, owner_name)
            if owner is not None and hasattr(owner, method):
                unwrap(owner, method)


def _owner(module: str, name: str) -> Any:
    try:
        return getattr(importlib.import_module(module), name, None)
    except ImportError:  # an SDK without the beta resources
        return None


# --- one call -----------------------------------------------------------------------------------------------
class _Call:
    """The span of one SDK call, ended exactly once, whoever ends it (the stream's last event, a
    ``close()``, a finalizer in another thread). Never raises."""

    __slots__ = ("_ended", "_lock", "call", "destination", "started")

    def __init__(self, call: AICall, destination: str | None) -> None:
        self.call = call.start()
        self.destination = destination
        self.started = time.monotonic()
        self._ended = False
        self._lock = threading.Lock()

    def current(self) -> Any:
        """Make the span current (and name the destination for the outbound policy) around the SDK
        call only; exceptions are recorded by ``end``."""
        return _Current(self)

    def record_message(self, message: Any) -> None:
        """Record a non-streamed answer (a ``Message``); anything else (a raw response) records nothing."""
        try:
            usage = _field(message, "usage")
            stop_reason = _text(_field(message, "stop_reason"))
            output = None
            if content.capture_content():
                output = [_output_message(_parts(_field(message, "content")), stop_reason)]
            self.call.record_response(
                model=_text(_field(message, "model")),
                response_id=_text(_field(message, "id")),
                finish_reasons=[stop_reason] if stop_reason else None,
                input_tokens=_input_tokens(usage),
                output_tokens=_int(_field(usage, "output_tokens")),
                output_messages=output,
                cache_read_input_tokens=_int(_field(usage, "cache_read_input_tokens")),
                cache_creation_input_tokens=_int(_field(usage, "cache_creation_input_tokens")),
            )
        except Exception:
            logger.debug("sessiontrace: could not record an Anthropic response", exc_info=True)

    def end(self, error: BaseException | None = None) -> None:
        with self._lock:
            if self._ended:
                return
            self._ended = True
        try:
            if error is not None:
                _record_error(self.call, error)
            self.call.end()
        except Exception:
            logger.debug("sessiontrace: could not end the span of an Anthropic call", exc_info=True)


class _Current:
    """``with call.current():`` the span is current and the destination named, for one block."""

    __slots__ = ("_call", "_outbound", "_use")

    def __init__(self, call: _Call) -> None:
        self._call = call
        self._use = trace.use_span(
            call.call.span, end_on_exit=False, record_exception=False, set_status_on_exception=False
        )
        self._outbound = outbound_to(call.destination)

    def __enter__(self) -> None:
        self._use.__enter__()
        self._outbound.__enter__()

    def __exit__(self, *exc_info: Any) -> None:
        try:
            self._outbound.__exit__(None, None, None)
        finally:
            # No exception passed in: use_span would set the status from its class name, and the
            # status code of an HTTP error is the better error.type (``end`` records it).
            self._use.__exit__(None, None, None)


def _start(instance: Any, kwargs: Mapping[str, Any], *, stream: bool = False) -> _Call | None:
    """Start the span of a ``create``/``parse``/``stream`` call with these arguments (``stream``:
    the helper, streamed whatever the arguments say), or None when our bookkeeping fails (the call
    then goes on untraced), as when instrumentation is suppressed."""
    if not is_instrumentation_enabled():  # inside suppress_instrumentation()
        return None
    try:
        model = kwargs.get("model")
        capture = content.capture_content()
        target = _endpoint(instance)
        call = AICall(
            model=model if isinstance(model, str) and model else "unknown",
            provider=PROVIDER,
            operation=OPERATION,
            conversation_id=None,
            settings=_settings(kwargs),
            input_messages=_input_messages(kwargs.get("messages")) if capture else None,
            system_instructions=_system_instructions(kwargs.get("system")) if capture else None,
            attributes=request_extras(
                target.attributes if target is not None else {},
                stream=stream or kwargs.get("stream") is True,
                output_type="json" if _structured(kwargs) else None,
            ),
            tracer=_provider_tracer,
        )
        return _Call(call, target.url if target is not None else None)
    except Exception:
        logger.debug("sessiontrace: could not start the span of an Anthropic call", exc_info=True)
        return None


def _structured(kwargs: Mapping[str, Any]) -> bool:
    """Structured (JSON) output asked for: a model class for ``parse()``/``stream()`` (a format dict
    for the beta ``create``), or a format in ``output_config``."""
    output_format = kwargs.get("output_format")
    return isinstance(output_format, (type, Mapping)) or isinstance(
        _field(kwargs.get("output_config"), "format"), Mapping
    )


def _settings(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Request settings given as arguments or, for those the SDK has no argument for (2.x dropped
    ``temperature`` and ``top_p``), in ``extra_body``; an argument wins."""
    extra = kwargs.get("extra_body")
    settings = {name: extra[name] for name in _SETTINGS if name in extra} if isinstance(extra, Mapping) else {}
    settings.update({name: kwargs[name] for name in _SETTINGS if name in kwargs})
    return settings


def _endpoint(instance: Any) -> Endpoint | None:
    """The client's base URL and ``server.*`` attributes, parsed once per client."""
    client = getattr(instance, "_client", None)
    return endpoint(getattr(client, "_base_url", None) or getattr(client, "base_url", None))


def _record_error(call: AICall, error: BaseException) -> None:
    error_type = _error_type(error)
    if isinstance(error, Exception):
        call.span.record_exception(error)
        call.fail(error_type, f"{type(error).__name__}: {error}")
    else:  # cancelled or interrupted: not an error of the call, as OpenTelemetry's use_span sees it
        call.span.set_attribute(semconv.ERROR_TYPE, error_type)


def _error_type(error: BaseException) -> str:
    """The HTTP status code of a status error, else the exception's class name. An error event in
    a stream arrives on a 200 response: its body's error type says more than the status code."""
    try:
        from anthropic import APIStatusError
    except ImportError:  # pragma: no cover - the SDK is what raised
        return type(error).__qualname__
    status = getattr(error, "status_code", None)
    if isinstance(error, APIStatusError) and isinstance(status, int):
        if status >= 400:
            return str(status)
        kind = _field(_field(getattr(error, "body", None), "error"), "type")
        if isinstance(kind, str) and kind:
            return kind
    return type(error).__qualname__


# --- Messages.create -------------------------------------------------------------------------------------
def _create(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    call = _start(instance, kwargs)
    if call is None:
        return wrapped(*args, **kwargs)
    try:
        with call.current():
            result = wrapped(*args, **kwargs)
    except BaseException as error:
        call.end(error)
        raise
    return _answer(call, result, _StreamProxy)


async def _create_async(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    call = _start(instance, kwargs)
    if call is None:
        return await wrapped(*args, **kwargs)
    try:
        with call.current():
            result = await wrapped(*args, **kwargs)
    except BaseException as error:
        call.end(error)
        raise
    return _answer(call, result, _AsyncStreamProxy)


def _answer(call: _Call, result: Any, proxy: type[_StreamProxy] | type[_AsyncStreamProxy]) -> Any:
    """The SDK's answer as the caller gets it: a stream wrapped to record as it is read, or the
    message, recorded now."""
    if _is_stream(result):
        try:
            return proxy(result, _StreamRecorder(call))
        except Exception:
            logger.debug("sessiontrace: could not observe an Anthropic stream", exc_info=True)
            call.end()
            return result
    call.record_message(result)
    call.end()
    return result


def _is_stream(result: Any) -> bool:
    try:
        from anthropic import AsyncStream, Stream
    except ImportError:  # pragma: no cover - the SDK returned it
        return False
    return isinstance(result, (Stream, AsyncStream))


# --- streams -------------------------------------------------------------------------------------------------
class _StreamRecorder:
    """What a stream's events say, gathered as the caller reads them; written to the span once at
    the end, whatever ends it."""

    __slots__ = (
        "_blocks",
        "_call",
        "_capture",
        "_finished",
        "_first",
        "_lock",
        "_model",
        "_response_id",
        "_stop_reason",
        "_usage",
    )

    def __init__(self, call: _Call) -> None:
        self._call = call
        self._capture = content.capture_content()
        self._first = True
        self._finished = False
        self._lock = threading.Lock()
        self._model: str | None = None
        self._response_id: str | None = None
        self._stop_reason: str | None = None
        self._usage: dict[str, int] = {}
        self._blocks: dict[int, dict[str, Any]] = {}

    def event(self, event: Any) -> None:
        if self._finished:
            return
        try:
            self._event(event)
        except Exception:
            logger.debug("sessiontrace: could not read an Anthropic stream event", exc_info=True)

    def _event(self, event: Any) -> None:
        if self._first:
            self._first = False
            self._call.call.span.set_attribute(
                semconv.GEN_AI_TIME_TO_FIRST_CHUNK, time.monotonic() - self._call.started
            )
        kind = _field(event, "type")
        if kind == "message_start":
            message = _field(event, "message")
            self._model = _text(_field(message, "model")) or self._model
            self._response_id = _text(_field(message, "id")) or self._response_id
            self._add_usage(_field(message, "usage"))
        elif kind == "message_delta":
            self._stop_reason = _text(_field(_field(event, "delta"), "stop_reason")) or self._stop_reason
            self._add_usage(_field(event, "usage"))
        elif self._capture and kind == "content_block_start":
            self._blocks[_int(_field(event, "index")) or 0] = {"block": _field(event, "content_block"), "deltas": []}
        elif self._capture and kind == "content_block_delta":
            block = self._blocks.get(_int(_field(event, "index")) or 0)
            delta = _field(event, "delta")
            piece = next(
                (_field(delta, name) for name in ("text", "partial_json", "thinking") if _field(delta, name)), None
            )
            if block is not None and isinstance(piece, str):
                block["deltas"].append(piece)

    def _add_usage(self, usage: Any) -> None:
        # message_delta carries cumulative counts: a later value replaces an earlier one.
        for name in ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"):
            value = _int(_field(usage, name))
            if value is not None:
                self._usage[name] = value

    def finish(self, error: BaseException | None = None) -> None:
        """End the span with what was seen. Called at exhaustion, error, close or collection."""
        with self._lock:
            if self._finished:
                return
            self._finished = True
        try:
            output = None
            if self._capture and self._blocks:
                parts = [_streamed_part(self._blocks[index]) for index in sorted(self._blocks)]
                output = [_output_message(parts, self._stop_reason)]
            self._call.call.record_response(
                model=self._model,
                response_id=self._response_id,
                finish_reasons=[self._stop_reason] if self._stop_reason else None,
                input_tokens=_input_tokens(self._usage) if "input_tokens" in self._usage else None,
                output_tokens=self._usage.get("output_tokens"),
                output_messages=output,
                cache_read_input_tokens=self._usage.get("cache_read_input_tokens"),
                cache_creation_input_tokens=self._usage.get("cache_creation_input_tokens"),
            )
        except Exception:
            logger.debug("sessiontrace: could not record an Anthropic stream", exc_info=True)
        self._call.end(error)


def _streamed_part(state: Mapping[str, Any]) -> dict[str, Any]:
    block, deltas = state["block"], state["deltas"]
    part = _part(block)
    joined = "".join(deltas)
    if part.get("type") == "tool_call":
        if joined:
            try:
                part["arguments"] = json.loads(joined)
            except ValueError:  # cut short: keep what arrived
                part["arguments"] = joined
    elif joined:
        part["content"] = (part.get("content") or "") + joined
    return part


def _watch(proxy: Any, recorder: _StreamRecorder) -> None:
    # A stream the caller drops unread still ends its span; the finalizer holds the recorder, not the proxy.
    finalizer = weakref.finalize(proxy, recorder.finish)
    finalizer.atexit = False


class _StreamProxy(ObjectProxy[Any]):
    """An ``anthropic.Stream`` that records its events; otherwise the stream itself. Its own
    iterator, as the SDK's stream is: a loop left early can be resumed by the next, so only the
    end of the events, ``close()``, ``with`` or the finalizer ends the span, never a ``break``."""

    def __init__(self, wrapped: Any, recorder: _StreamRecorder) -> None:
        super().__init__(wrapped)
        self._self_recorder = recorder
        _watch(self, recorder)

    def __iter__(self) -> _StreamProxy:
        return self

    def __next__(self) -> Any:
        recorder = self._self_recorder
        try:
            item = self.__wrapped__.__next__()
        except StopIteration:
            recorder.finish()
            raise
        except BaseException as error:
            recorder.finish(error)
            raise
        recorder.event(item)
        return item

    def __enter__(self) -> _StreamProxy:
        self.__wrapped__.__enter__()
        return self

    def __exit__(self, *exc_info: Any) -> Any:
        try:
            return self.__wrapped__.__exit__(*exc_info)
        finally:
            self._self_recorder.finish()

    def close(self) -> None:
        try:
            self.__wrapped__.close()
        finally:
            self._self_recorder.finish()


class _AsyncStreamProxy(ObjectProxy[Any]):
    """An ``anthropic.AsyncStream`` that records its events; otherwise the stream itself, its own
    iterator (see ``_StreamProxy``)."""

    def __init__(self, wrapped: Any, recorder: _StreamRecorder) -> None:
        super().__init__(wrapped)
        self._self_recorder = recorder
        _watch(self, recorder)

    def __aiter__(self) -> _AsyncStreamProxy:
        return self  # resumable, as the sync proxy

    async def __anext__(self) -> Any:
        recorder = self._self_recorder
        try:
            item = await self.__wrapped__.__anext__()
        except StopAsyncIteration:
            recorder.finish()
            raise
        except BaseException as error:
            recorder.finish(error)
            raise
        recorder.event(item)
        return item

    async def __aenter__(self) -> _AsyncStreamProxy:
        await self.__wrapped__.__aenter__()
        return self

    async def __aexit__(self, *exc_info: Any) -> Any:
        try:
            return await self.__wrapped__.__aexit__(*exc_info)
        finally:
            self._self_recorder.finish()

    async def close(self) -> None:
        try:
            await self.__wrapped__.close()
        finally:
            self._self_recorder.finish()


# --- messages.stream(...) -----------------------------------------------------------------------------------
def _stream(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    manager = wrapped(*args, **kwargs)
    return _StreamManagerProxy(manager, instance, kwargs)


def _stream_async(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    manager = wrapped(*args, **kwargs)
    return _AsyncStreamManagerProxy(manager, instance, kwargs)


def _observe_message_stream(stream: Any, call: _Call, proxy: type[_StreamProxy] | type[_AsyncStreamProxy]) -> None:
    """Put our proxy under the helper's ``MessageStream``, so every way of reading it (iteration,
    ``text_stream``, ``get_final_message()``) passes our recorder. The helper has no public hook."""
    raw = getattr(stream, "_raw_stream", None)
    if raw is None or not _is_stream(raw):
        warn_once("anthropic:MessageStream", "sessiontrace: unknown anthropic MessageStream; its span has no answer")
        call.end()
        return
    stream._raw_stream = proxy(raw, _StreamRecorder(call))


class _StreamManagerProxy(ObjectProxy[Any]):
    """``messages.stream(...)``: the request is sent by ``__enter__``, so the span starts there."""

    def __init__(self, wrapped: Any, instance: Any, kwargs: Mapping[str, Any]) -> None:
        super().__init__(wrapped)
        self._self_instance = instance
        self._self_kwargs = kwargs

    def __enter__(self) -> Any:
        call = _start(self._self_instance, self._self_kwargs, stream=True)
        if call is None:
            return self.__wrapped__.__enter__()
        try:
            with call.current():
                stream = self.__wrapped__.__enter__()
        except BaseException as error:
            call.end(error)
            raise
        try:
            _observe_message_stream(stream, call, _StreamProxy)
        except Exception:
            logger.debug("sessiontrace: could not observe an Anthropic message stream", exc_info=True)
            call.end()
        return stream

    def __exit__(self, *exc_info: Any) -> Any:
        return self.__wrapped__.__exit__(*exc_info)


class _AsyncStreamManagerProxy(ObjectProxy[Any]):
    """``async with messages.stream(...)``: the request is awaited by ``__aenter__``."""

    def __init__(self, wrapped: Any, instance: Any, kwargs: Mapping[str, Any]) -> None:
        super().__init__(wrapped)
        self._self_instance = instance
        self._self_kwargs = kwargs

    async def __aenter__(self) -> Any:
        call = _start(self._self_instance, self._self_kwargs, stream=True)
        if call is None:
            return await self.__wrapped__.__aenter__()
        try:
            with call.current():
                stream = await self.__wrapped__.__aenter__()
        except BaseException as error:
            call.end(error)
            raise
        try:
            _observe_message_stream(stream, call, _AsyncStreamProxy)
        except Exception:
            logger.debug("sessiontrace: could not observe an Anthropic message stream", exc_info=True)
            call.end()
        return stream

    async def __aexit__(self, *exc_info: Any) -> Any:
        return await self.__wrapped__.__aexit__(*exc_info)


_TARGETS: tuple[tuple[str, str, str, Callable[..., Any], bool], ...] = (
    (_MODULE, "Messages", "create", _create, True),
    (_MODULE, "AsyncMessages", "create", _create_async, True),
    (_MODULE, "Messages", "stream", _stream, True),
    (_MODULE, "AsyncMessages", "stream", _stream_async, True),
    # parse() posts itself (not through create); it and the beta resource come and go with SDK versions
    (_MODULE, "Messages", "parse", _create, False),
    (_MODULE, "AsyncMessages", "parse", _create_async, False),
    (_BETA_MODULE, "Messages", "create", _create, False),
    (_BETA_MODULE, "AsyncMessages", "create", _create_async, False),
    (_BETA_MODULE, "Messages", "parse", _create, False),
    (_BETA_MODULE, "AsyncMessages", "parse", _create_async, False),
    (_BETA_MODULE, "Messages", "stream", _stream, False),
    (_BETA_MODULE, "AsyncMessages", "stream", _stream_async, False),
)
"""What is wrapped: (module, class, method, wrapper, warn when missing)."""


# --- content: Anthropic blocks to semconv parts ----------------------------------------------------------
def _input_messages(messages: Any) -> list[dict[str, Any]] | None:
    # Only a sequence: an iterator read here would be empty when the SDK reads it.
    if not _is_sequence(messages):
        return None
    return [
        {"role": _text(_field(message, "role")) or "user", "parts": _parts(_field(message, "content"))}
        for message in messages
    ]


def _system_instructions(system: Any) -> list[dict[str, Any]] | None:
    if system is None or not (isinstance(system, str) or _is_sequence(system)):
        return None  # omitted (the SDK's ``omit`` sentinel) or an iterator we must not consume
    return _parts(system)


def _output_message(parts: list[dict[str, Any]], finish_reason: str | None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "parts": parts}
    if finish_reason:
        message["finish_reason"] = finish_reason
    return message


def _parts(blocks: Any) -> list[dict[str, Any]]:
    if blocks is None:
        return []
    if isinstance(blocks, str):
        return [{"type": "text", "content": blocks}]
    if _is_sequence(blocks):
        return [_part(block) for block in blocks]
    return [_part(blocks)]


def _part(block: Any) -> dict[str, Any]:
    """One content block (a dict from the caller or a model from the SDK) as a semconv part.
    Binary and document content never leaves as such: a marker names its type and size."""
    if isinstance(block, str):
        return {"type": "text", "content": block}
    kind = _field(block, "type")
    if not isinstance(kind, str):
        return {"type": "unknown", "content": block}  # messages_json makes it safe (bytes -> marker, repr)
    if kind == "text":
        return {"type": "text", "content": _field(block, "text")}
    if kind in ("tool_use", "server_tool_use", "mcp_tool_use"):
        return {
            "type": "tool_call",
            "id": _field(block, "id"),
            "name": _field(block, "name"),
            "arguments": _field(block, "input"),
        }
    if kind in ("tool_result", "mcp_tool_result"):
        result = _field(block, "content")
        return {
            "type": "tool_call_response",
            "id": _field(block, "tool_use_id"),
            "response": result if isinstance(result, str) else _parts(result),
        }
    if kind == "thinking":
        return {"type": "reasoning", "content": _field(block, "thinking")}
    if kind == "redacted_thinking":
        return {"type": "reasoning", "content": "[redacted]"}
    if kind in ("image", "document"):
        return _media_part(kind, _field(block, "source"))
    return {"type": kind}  # a block type we do not know may hold anything: its type only


def _media_part(kind: str, source: Any) -> dict[str, Any]:
    modality = "image" if kind == "image" else "document"
    source_type = _field(source, "type")
    if source_type == "url":
        url = _field(source, "url")
        if isinstance(url, str) and not url.startswith("data:"):
            return {"type": "uri", "modality": modality, "uri": url}
    if source_type == "file":
        return {"type": "file", "modality": modality, "file_id": _field(source, "file_id")}
    media_type = _text(_field(source, "media_type")) or (
        "text/plain" if source_type == "text" else "application/octet-stream"
    )
    return {"type": kind, "mime_type": media_type, "content": _marker(media_type, _field(source, "data"))}


def _marker(media_type: str, data: Any) -> str:
    """``[image/png 1234 bytes]``: the size from the base64 length, without decoding a large image."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return f"[{media_type} {len(bytes(data))} bytes]"
    if isinstance(data, str):
        if media_type.startswith("text/"):
            return f"[{media_type} {len(data)} chars]"
        return f"[{media_type} {len(data.rstrip('=')) * 3 // 4} bytes]"
    return f"[{media_type}]"


# --- small readers: SDK models and plain dicts alike -------------------------------------------------------
def _field(value: Any, name: str) -> Any:
    if value is None:
        return None
    if isinstance(value, Mapping):
        return value.get(name)
    try:
        return getattr(value, name, None)
    except Exception:  # a property that raises
        return None


def _is_sequence(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes, bytearray))


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _input_tokens(usage: Any) -> int | None:
    """All input tokens, as the GenAI conventions ask: Anthropic counts tokens read from and written
    to the prompt cache apart from ``input_tokens``."""
    total = _int(_field(usage, "input_tokens"))
    if total is None:
        return None
    for name in ("cache_creation_input_tokens", "cache_read_input_tokens"):
        total += _int(_field(usage, name)) or 0
    return total


__all__ = ["AnthropicInstrumentor"]
