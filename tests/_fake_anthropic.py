"""A fake Anthropic API on loopback: the edge of the machine, the one double our AI tests use.

A real HTTP server (``http.server``, threaded) speaking the Messages API wire format for
``POST /v1/messages``: a JSON ``Message``, or server-sent events when the body says ``stream``.
The text of the last user message picks the behaviour:

- ``FAIL 500`` / ``FAIL 529``: an error response with that status (``api_error`` / ``overloaded_error``);
- ``FAIL MIDSTREAM``: a stream that starts, then sends an ``error`` event;
- ``SLOW``: no answer for a while (longer than the tests' client timeout);
- ``TOOL``: the model asks for the ``lookup_policy`` tool;
- ``CACHED``: usage includes prompt-cache reads and writes;
- anything else: the answer ``Hello there, claimant.`` (streamed as three text deltas), as
  ``{"answer": ...}`` JSON when the body asks for a format (``output_config.format``: ``parse()``).

Every request is kept (headers and JSON body) for the tests to inspect.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ANSWER_CHUNKS = ("Hello", " there", ", claimant.")
ANSWER = "".join(ANSWER_CHUNKS)
INPUT_TOKENS = 12
OUTPUT_TOKENS = 3
CACHE_WRITE_TOKENS = 20
CACHE_READ_TOKENS = 100
TOOL_ID = "toolu_fake_01"
TOOL_NAME = "lookup_policy"
TOOL_INPUT = {"policy_id": "P-1", "fields": ["status"]}
TOOL_TEXT = "Let me look that up."
SLOW_SECONDS = 5.0


def response_model(model: str) -> str:
    """The model that answers: the requested alias pinned to a dated version, as the real API does."""
    return f"{model}-20250929"


@dataclass
class Recorded:
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class FakeAnthropic:
    """The running server: ``base_url`` for the client, ``requests`` it received."""

    server: ThreadingHTTPServer
    stopping: threading.Event
    requests: list[Recorded] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"


def _last_user_text(body: dict[str, Any]) -> str:
    for message in reversed(body.get("messages") or []):
        if message.get("role") != "user":
            continue
        blocks = message.get("content")
        if isinstance(blocks, str):
            return blocks
        return " ".join(str(block.get("text", "")) for block in blocks or [] if isinstance(block, dict))
    return ""


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet: pytest shows failures, not access logs
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        fake = self.server.fake
        fake.requests.append(Recorded({k.lower(): v for k, v in self.headers.items()}, body))
        if self.path.split("?")[0] != "/v1/messages":
            self._json(404, {"type": "error", "error": {"type": "not_found_error", "message": self.path}})
            return
        prompt = _last_user_text(body)
        if "FAIL 500" in prompt:
            self._json(500, {"type": "error", "error": {"type": "api_error", "message": "Internal server error"}})
            return
        if "FAIL 529" in prompt:
            self._json(529, {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
            return
        if "SLOW" in prompt:
            fake.stopping.wait(SLOW_SECONDS)
        message = _message(body, prompt, next(self.server.ids))
        try:
            if body.get("stream"):
                self._stream(message, fail="FAIL MIDSTREAM" in prompt)
            else:
                self._json(200, message)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout, abandoned stream): nothing to answer

    def _json(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.send_header("request-id", "req_fake")
        self.end_headers()
        self.wfile.write(data)

    def _stream(self, message: dict[str, Any], *, fail: bool) -> None:
        # HTTP/1.0 without a length: the body ends when the connection closes, as a stream may.
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.end_headers()
        for event, data in _events(message, fail=fail):
            self.wfile.write(f"event: {event}\ndata: {json.dumps(data)}\n\n".encode())
            self.wfile.flush()


def _message(body: dict[str, Any], prompt: str, number: int) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "input_tokens": INPUT_TOKENS,
        "output_tokens": OUTPUT_TOKENS,
        "cache_creation_input_tokens": CACHE_WRITE_TOKENS if "CACHED" in prompt else 0,
        "cache_read_input_tokens": CACHE_READ_TOKENS if "CACHED" in prompt else 0,
    }
    if "TOOL" in prompt:
        blocks: list[dict[str, Any]] = [
            {"type": "text", "text": TOOL_TEXT},
            {"type": "tool_use", "id": TOOL_ID, "name": TOOL_NAME, "input": TOOL_INPUT},
        ]
        stop_reason = "tool_use"
    else:
        structured = isinstance(body.get("output_config"), dict) and body["output_config"].get("format")
        blocks = [{"type": "text", "text": json.dumps({"answer": ANSWER}) if structured else ANSWER}]
        stop_reason = "end_turn"
    return {
        "id": f"msg_fake_{number:04d}",
        "type": "message",
        "role": "assistant",
        "model": response_model(str(body.get("model"))),
        "content": blocks,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": usage,
    }


def _events(message: dict[str, Any], *, fail: bool) -> Iterator[tuple[str, dict[str, Any]]]:
    usage = message["usage"]
    start = {**message, "content": [], "stop_reason": None, "usage": {**usage, "output_tokens": 1}}
    yield "message_start", {"type": "message_start", "message": start}
    if fail:
        yield "error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
        return
    yield "ping", {"type": "ping"}
    for index, block in enumerate(message["content"]):
        if block["type"] == "text":
            yield (
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}},
            )
            chunks = ANSWER_CHUNKS if block["text"] == ANSWER else (block["text"],)
            for chunk in chunks:
                delta = {"type": "text_delta", "text": chunk}
                yield "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
        else:
            opening = {**block, "input": {}}
            yield "content_block_start", {"type": "content_block_start", "index": index, "content_block": opening}
            text = json.dumps(block["input"])
            for piece in (text[: len(text) // 2], text[len(text) // 2 :]):
                delta = {"type": "input_json_delta", "partial_json": piece}
                yield "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
        yield "content_block_stop", {"type": "content_block_stop", "index": index}
    final_usage = {"output_tokens": usage["output_tokens"]}
    delta = {"stop_reason": message["stop_reason"], "stop_sequence": None}
    yield "message_delta", {"type": "message_delta", "delta": delta, "usage": final_usage}
    yield "message_stop", {"type": "message_stop"}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeAnthropic
    ids: Iterator[int]


def start() -> FakeAnthropic:
    """Serve on a free loopback port in a background thread; ``stop()`` it when done."""
    server = _Server(("127.0.0.1", 0), _Handler)
    fake = FakeAnthropic(server, threading.Event())
    server.fake = fake
    server.ids = itertools.count(1)
    threading.Thread(target=server.serve_forever, name="fake-anthropic", daemon=True).start()
    return fake


def stop(fake: FakeAnthropic) -> None:
    fake.stopping.set()  # release SLOW handlers
    fake.server.shutdown()
    fake.server.server_close()
