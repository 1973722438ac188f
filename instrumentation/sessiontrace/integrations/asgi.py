"""Inbound ASGI middleware: every HTTP request runs inside a session.

Put it inside OpenTelemetry's ASGI middleware when you use both
(``OpenTelemetryMiddleware(SessionMiddleware(app))``) so the server span is the parent.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from sessiontrace import semconv
from sessiontrace.integrations._inbound import InboundMiddleware, InboundSession, as_text, join_header, request_trigger

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class SessionMiddleware(InboundMiddleware[ASGIApp]):
    """Every HTTP request runs in a session; options as in ``InboundMiddleware``."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers: dict[str, str] = {}
        for name, value in scope.get("headers") or ():
            key = as_text(name).lower()
            headers[key] = join_header(headers.get(key), as_text(value))
        client = scope.get("client")
        peer = client[0] if client else None
        trigger = request_trigger(str(scope.get("method", "WS")), str(scope.get("path", "")))

        with InboundSession(
            headers, peer, trigger_source=self.trigger_source, trigger_type=trigger, mint=self.mint
        ) as session:
            if session is None or not self.response_header:
                await self.app(scope, receive, send)
                return
            header = (semconv.SESSION_RESPONSE_HEADER.encode(), session.id.encode())

            async def send_with_id(message: Message) -> None:
                if message.get("type") == "http.response.start":
                    message = {**message, "headers": [*message.get("headers", ()), header]}
                await send(message)

            await self.app(scope, receive, send_with_id)
