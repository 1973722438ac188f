"""Inbound WSGI middleware: every request runs inside a session.

Put it inside OpenTelemetry's WSGI middleware when you use both
(``OpenTelemetryMiddleware(SessionMiddleware(app))``) so the server span is the parent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry.context import Context

from sessiontrace import semconv
from sessiontrace.integrations._inbound import InboundMiddleware, InboundSession, request_trigger

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class SessionMiddleware(InboundMiddleware[WSGIApp]):
    """Every HTTP request runs in a session; options as in ``InboundMiddleware``."""

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        headers = {
            key[5:].replace("_", "-").lower(): str(value) for key, value in environ.items() if key.startswith("HTTP_")
        }
        trigger = request_trigger(str(environ.get("REQUEST_METHOD", "GET")), str(environ.get("PATH_INFO", "")))
        inbound = InboundSession(
            headers,
            environ.get("REMOTE_ADDR"),
            trigger_source=self.trigger_source,
            trigger_type=trigger,
            mint=self.mint,
        )
        session = inbound.__enter__()
        start = start_response
        if session is not None and self.response_header:

            def start(status: str, response_headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
                response_headers = [*response_headers, (semconv.SESSION_RESPONSE_HEADER, session.id)]
                return start_response(status, response_headers, exc_info)

        try:
            body = self.app(environ, start)
            context = otel_context.get_current()
        except BaseException as error:
            inbound.__exit__(type(error), error, error.__traceback__)
            raise
        # Leave the scope now, while attach/detach still nest with the outer middleware's: a
        # scope held until close() would restore a stale context into the server's next request.
        inbound.__exit__(None, None, None)
        if isinstance(body, (list, tuple)) or _is_file_wrapper(environ, body):
            # Nothing of the application runs while the server sends these: returned as they are,
            # they keep what servers look for (len() for Content-Length, the file for sendfile).
            return body
        return _BodyInContext(body, context)


def _is_file_wrapper(environ: dict[str, Any], body: object) -> bool:
    wrapper = environ.get("wsgi.file_wrapper")
    return isinstance(wrapper, type) and isinstance(body, wrapper)


class _BodyInContext:
    """A lazy body produces each chunk inside the request's context (session included), although
    the server iterates it after ``__call__`` returned and outer middleware reset the context."""

    def __init__(self, body: Iterable[bytes], context: Context) -> None:
        self._body = body
        self._context = context

    def __iter__(self) -> Iterator[bytes]:
        iterator = iter(self._body)
        while True:
            token = otel_context.attach(self._context)
            try:
                chunk = next(iterator)
            except StopIteration:
                return
            finally:
                otel_context.detach(token)
            yield chunk

    def close(self) -> None:
        close = getattr(self._body, "close", None)
        if close is not None:
            token = otel_context.attach(self._context)
            try:
                close()
            finally:
                otel_context.detach(token)
