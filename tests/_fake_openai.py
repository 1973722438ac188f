"""A fake OpenAI server on loopback: the one test double we allow, because it stands at the edge of
the machine. It speaks the wire format the real SDK expects, so the real ``openai`` client is used.

``POST /v1/chat/completions`` answers JSON, or server-sent events with ``"stream": true``
(``data: {...}`` chunks, then ``data: [DONE]``); ``POST /v1/responses`` does the same for the
Responses API. What it does is chosen by the prompt text:

    FAIL 500   a 500 with an OpenAI error body        FAIL 429   a 429 (rate limited)
    SLOW       waits SLOW_SECONDS before answering     TOOL       calls ``get_weather`` for Paris
    FAILED RESPONSE   (Responses API) a 200 whose response failed: ``"status": "failed"``, or a
                      stream ending with a ``response.failed`` event
    ERROR EVENT       (Responses API, streamed) a stream ending with an ``error`` event

otherwise it answers ``REPLY``, one token per chunk (``{"answer": REPLY}`` when a non-streamed call asks
for a JSON schema). ``"logprobs": true`` adds ``LOGPROBS``;
``"stream_options": {"include_usage": true}`` adds a final usage chunk. Usage is always
``PROMPT_TOKENS`` in and one token per reply token out.

Used by tests/test_ai_openai.py and benchmarks/bench_openai.py; it needs only uvicorn.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import Any

REPLY = ["Hello", " from", " the", " fake", " model."]
LOGPROBS = [-0.01, -0.2, -0.05, -0.1, -0.3]
PROMPT_TOKENS = 12
CACHED_TOKENS = 4  # of the prompt tokens, served from the prompt cache
RESPONSE_ID = "chatcmpl-fake-1"
RESPONSES_ID = "resp_fake_1"
TOOL_CALL_ID = "call_fake_1"
TOOL_NAME = "get_weather"
TOOL_ARGUMENTS = ['{"city"', ': "Paris"}']
SLOW_SECONDS = 1.0
FAILED_CODE = "server_error"
FAILED_MESSAGE = "The model failed to answer"
CREATED = 1_700_000_000

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def response_model(model: str) -> str:
    """The model the server says answered (a dated snapshot of the one asked for, as OpenAI does)."""
    return f"{model}-2025-01-01"


def _prompt_text(body: dict[str, Any]) -> str:
    """Every piece of text the caller sent, to look for the mode words in."""
    texts: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, str):
            texts.append(value)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(body.get("messages"))
    walk(body.get("input"))
    return " ".join(texts)


def _error(status: int, message: str, kind: str) -> tuple[int, dict[str, Any]]:
    return status, {"error": {"message": message, "type": kind, "param": None, "code": None}}


def _logprobs(enabled: bool, tokens: list[str], values: list[float]) -> dict[str, Any] | None:
    if not enabled:
        return None
    return {
        "content": [
            {"token": token, "logprob": value, "bytes": list(token.encode()), "top_logprobs": []}
            for token, value in zip(tokens, values, strict=True)
        ],
        "refusal": None,
    }


def _usage(completion_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": completion_tokens,
        "total_tokens": PROMPT_TOKENS + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": CACHED_TOKENS},
    }


def answer_text(body: dict[str, Any]) -> str:
    """The reply, as JSON when the request asks for a JSON schema (structured outputs, ``parse()``)."""
    formats = (body.get("response_format") or {}, (body.get("text") or {}).get("format") or {})
    if any(requested.get("type") == "json_schema" for requested in formats):
        return json.dumps({"answer": "".join(REPLY)})
    return "".join(REPLY)


# --- chat completions ------------------------------------------------------------------------------------
def chat_completion(body: dict[str, Any], tool: bool) -> dict[str, Any]:
    if tool:
        message: dict[str, Any] = {
            "role": "assistant",
            "content": None,
            "refusal": None,
            "tool_calls": [
                {
                    "id": TOOL_CALL_ID,
                    "type": "function",
                    "function": {"name": TOOL_NAME, "arguments": "".join(TOOL_ARGUMENTS)},
                }
            ],
        }
        finish, completion_tokens, logprobs = "tool_calls", len(TOOL_ARGUMENTS), None
    else:
        message = {"role": "assistant", "content": answer_text(body), "refusal": None}
        finish, completion_tokens = "stop", len(REPLY)
        logprobs = _logprobs(bool(body.get("logprobs")), REPLY, LOGPROBS)
    return {
        "id": RESPONSE_ID,
        "object": "chat.completion",
        "created": CREATED,
        "model": response_model(body["model"]),
        "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": logprobs}],
        "usage": _usage(completion_tokens),
    }


def chat_chunks(body: dict[str, Any], tool: bool) -> Iterator[dict[str, Any]]:
    def chunk(delta: dict[str, Any], finish: str | None = None, logprobs: Any = None) -> dict[str, Any]:
        return {
            "id": RESPONSE_ID,
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": response_model(body["model"]),
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": logprobs}],
        }

    yield chunk({"role": "assistant", "content": ""})
    if tool:
        yield chunk(
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": TOOL_CALL_ID,
                        "type": "function",
                        "function": {"name": TOOL_NAME, "arguments": ""},
                    }
                ]
            }
        )
        for piece in TOOL_ARGUMENTS:
            yield chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
        yield chunk({}, "tool_calls")
        completion_tokens = len(TOOL_ARGUMENTS)
    else:
        for token, value in zip(REPLY, LOGPROBS, strict=True):
            yield chunk({"content": token}, logprobs=_logprobs(bool(body.get("logprobs")), [token], [value]))
        yield chunk({}, "stop")
        completion_tokens = len(REPLY)
    if (body.get("stream_options") or {}).get("include_usage"):
        final = chunk({})
        final["choices"] = []
        final["usage"] = _usage(completion_tokens)
        yield final


# --- Responses API ---------------------------------------------------------------------------------------
def response_object(body: dict[str, Any], tool: bool, status: str = "completed") -> dict[str, Any]:
    if tool:
        output: list[dict[str, Any]] = [
            {
                "type": "function_call",
                "id": "fc_fake_1",
                "call_id": TOOL_CALL_ID,
                "name": TOOL_NAME,
                "arguments": "".join(TOOL_ARGUMENTS),
                "status": "completed",
            }
        ]
        completion_tokens = len(TOOL_ARGUMENTS)
    else:
        output = [
            {
                "type": "message",
                "id": "msg_fake_1",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": answer_text(body), "annotations": []}],
            }
        ]
        completion_tokens = len(REPLY)
    done = status == "completed"
    return {
        "id": RESPONSES_ID,
        "object": "response",
        "created_at": CREATED,
        "model": response_model(body["model"]),
        "status": status,
        "output": output if done else [],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": (
            {
                "input_tokens": PROMPT_TOKENS,
                "output_tokens": completion_tokens,
                "total_tokens": PROMPT_TOKENS + completion_tokens,
                "input_tokens_details": {"cached_tokens": CACHED_TOKENS},
                "output_tokens_details": {"reasoning_tokens": 0},
            }
            if done
            else None
        ),
    }


def failed_response(body: dict[str, Any]) -> dict[str, Any]:
    return {**response_object(body, False, "failed"), "error": {"code": FAILED_CODE, "message": FAILED_MESSAGE}}


def response_events(body: dict[str, Any], tool: bool, prompt: str = "") -> Iterator[dict[str, Any]]:
    yield {"type": "response.created", "sequence_number": 0, "response": response_object(body, tool, "in_progress")}
    if "FAILED RESPONSE" in prompt:
        yield {"type": "response.failed", "sequence_number": 1, "response": failed_response(body)}
        return
    if "ERROR EVENT" in prompt:
        yield {"type": "error", "sequence_number": 1, "code": FAILED_CODE, "message": FAILED_MESSAGE, "param": None}
        return
    number = 1
    if not tool:
        for token in REPLY:
            yield {
                "type": "response.output_text.delta",
                "sequence_number": number,
                "item_id": "msg_fake_1",
                "output_index": 0,
                "content_index": 0,
                "delta": token,
            }
            number += 1
    yield {"type": "response.completed", "sequence_number": number, "response": response_object(body, tool)}


# --- the ASGI app ----------------------------------------------------------------------------------------
class FakeOpenAI:
    """The server: ``with FakeOpenAI() as server: OpenAI(base_url=server.base_url, ...)``."""

    def __init__(self, latency: float = 0.0) -> None:
        self.latency = latency  # seconds added before every answer (a provider is never this close)
        self.requests: list[dict[str, Any]] = []  # bodies received, newest last
        self.headers: list[dict[str, str]] = []  # their headers (names lowercased), same order
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = json.loads(b"".join(chunks) or b"{}")
        self.requests.append(body)
        self.headers.append({name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]})
        path = scope["path"]
        if scope["method"] != "POST" or path not in ("/v1/chat/completions", "/v1/responses"):
            await self._json(send, *_error(404, f"no route {path}", "invalid_request_error"))
            return
        prompt = _prompt_text(body)
        if "FAIL 500" in prompt:
            await self._json(send, *_error(500, "the fake model fell over", "server_error"))
            return
        if "FAIL 429" in prompt:
            await self._json(send, *_error(429, "slow down", "rate_limit_exceeded"))
            return
        if "SLOW" in prompt:
            await asyncio.sleep(SLOW_SECONDS)
        elif self.latency:
            await asyncio.sleep(self.latency)
        tool = "TOOL" in prompt
        chat = path == "/v1/chat/completions"
        if body.get("stream"):
            events = chat_chunks(body, tool) if chat else response_events(body, tool, prompt)
            await self._sse(send, events, done_marker=chat)
        elif not chat and "FAILED RESPONSE" in prompt:
            await self._json(send, 200, failed_response(body))
        else:
            await self._json(send, 200, chat_completion(body, tool) if chat else response_object(body, tool))

    async def _json(self, send: Send, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": data})

    async def _sse(self, send: Send, events: Iterator[dict[str, Any]], *, done_marker: bool) -> None:
        headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for event in events:
            prefix = b"" if done_marker else f"event: {event['type']}\n".encode()
            await send(
                {
                    "type": "http.response.body",
                    "body": prefix + b"data: " + json.dumps(event).encode() + b"\n\n",
                    "more_body": True,
                }
            )
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n" if done_marker else b""})

    # --- lifecycle -----------------------------------------------------------------------------------------
    def start(self) -> FakeOpenAI:
        import uvicorn

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Answers go out as separate small writes (headers, then body): without this, Nagle's
        # algorithm meets the client's delayed ACK and every call waits ~40 ms.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(("127.0.0.1", 0))
        self._socket, self.port = sock, sock.getsockname()[1]
        config = uvicorn.Config(
            self, log_level="warning", lifespan="off", access_log=False, timeout_graceful_shutdown=2
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the fake OpenAI server did not start on loopback")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        if self._socket is not None:
            self._socket.close()

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
