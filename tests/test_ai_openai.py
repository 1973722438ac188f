"""``OpenAIInstrumentor``: the real ``openai`` SDK against a fake OpenAI server on loopback
(tests/_fake_openai.py). Every call is an AI span, a child of the application's span, stamped with
the session; streams keep it open until they end, however they end; errors keep their type."""

from __future__ import annotations

import asyncio
import datetime
import gc
import json
import logging
import math
from collections.abc import Iterator
from typing import Any

import pytest

openai = pytest.importorskip("openai")

from opentelemetry import trace  # noqa: E402
from opentelemetry.sdk.trace import ReadableSpan  # noqa: E402
from opentelemetry.trace import SpanKind, StatusCode  # noqa: E402

import _fake_openai as fake_wire  # noqa: E402
from _fake_openai import FakeOpenAI  # noqa: E402
from sessiontrace import semconv  # noqa: E402
from sessiontrace._log import reset_warnings  # noqa: E402
from sessiontrace.ai import content  # noqa: E402
from sessiontrace.ai import openai as instrumentation  # noqa: E402
from sessiontrace.ai.openai import CONFIDENCE_EXPLANATION, OpenAIInstrumentor  # noqa: E402
from sessiontrace.context import Session, session  # noqa: E402
from sessiontrace.policy import OutboundPolicy  # noqa: E402
from sessiontrace.testing import CapturedSpans  # noqa: E402

tracer = trace.get_tracer("sessiontrace_tests.openai")

MODEL = "gpt-4o-mini"
ANSWERED_BY = fake_wire.response_model(MODEL)
HELLO = [{"role": "user", "content": "Say hello"}]
CONFIDENCE = math.exp(sum(fake_wire.LOGPROBS) / len(fake_wire.LOGPROBS))
TOOL_CALL_PART = {
    "type": "tool_call",
    "id": fake_wire.TOOL_CALL_ID,
    "name": fake_wire.TOOL_NAME,
    "arguments": {"city": "Paris"},
}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": fake_wire.TOOL_NAME,
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


SERVER: dict[str, Any] = {}
"""``server.address`` and ``server.port`` of the fake server, set when it starts."""


# --- fixtures ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as running:
        SERVER.update({semconv.SERVER_ADDRESS: "127.0.0.1", semconv.SERVER_PORT: running.port})
        yield running


@pytest.fixture
def spans(capsession: CapturedSpans) -> Iterator[CapturedSpans]:
    """Spans captured with the SDK instrumented; content capture off unless a test turns it on."""
    content.set_capture_content(False)
    instrumentor = OpenAIInstrumentor()
    instrumentor.instrument()
    try:
        yield capsession
    finally:
        instrumentor.uninstrument()
        content.set_capture_content(None)


@pytest.fixture
def capture(spans: CapturedSpans) -> None:
    content.set_capture_content(True)


@pytest.fixture
def client(server: FakeOpenAI) -> Iterator[Any]:
    with openai.OpenAI(base_url=server.base_url, api_key="test", max_retries=0) as sdk:
        yield sdk


def async_client(server: FakeOpenAI) -> Any:
    return openai.AsyncOpenAI(base_url=server.base_url, api_key="test", max_retries=0)


# --- helpers -------------------------------------------------------------------------------------------------
class App:
    """The application around the AI call: a session and the span of the work that makes it."""

    session: Session
    span: Any

    def __enter__(self) -> App:
        self._session_scope = session(user_id="clerk-7")
        self.session = self._session_scope.__enter__()
        self._span_scope = tracer.start_as_current_span("triage claim")
        self.span = self._span_scope.__enter__()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._span_scope.__exit__(*exc_info)
        self._session_scope.__exit__(*exc_info)

    def stamps(self) -> dict[str, Any]:
        return {semconv.SESSION_ID: self.session.id, semconv.USER_ID: "clerk-7"}


def ai_span(spans: CapturedSpans, model: str = MODEL) -> ReadableSpan:
    found = spans.named(f"chat {model}")
    assert len(found) == 1, [span.name for span in spans.spans]
    return found[0]


def assert_child_of(span: ReadableSpan, app: App) -> None:
    assert span.kind is SpanKind.CLIENT
    assert span.parent is not None
    assert span.parent.span_id == app.span.get_span_context().span_id
    assert span.context.trace_id == app.span.get_span_context().trace_id


def request(**extra: Any) -> dict[str, Any]:
    return {semconv.GEN_AI_OPERATION_NAME: "chat", semconv.GEN_AI_PROVIDER_NAME: "openai", **SERVER, **extra}


STREAMED = {semconv.GEN_AI_REQUEST_STREAM: True}


def answered(finish: str = "stop", output_tokens: int = len(fake_wire.REPLY), **extra: Any) -> dict[str, Any]:
    return {
        semconv.GEN_AI_RESPONSE_MODEL: ANSWERED_BY,
        semconv.GEN_AI_RESPONSE_ID: fake_wire.RESPONSE_ID,
        semconv.GEN_AI_RESPONSE_FINISH_REASONS: (finish,),
        semconv.GEN_AI_USAGE_INPUT_TOKENS: fake_wire.PROMPT_TOKENS,
        semconv.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS: fake_wire.CACHED_TOKENS,
        semconv.GEN_AI_USAGE_OUTPUT_TOKENS: output_tokens,
        **extra,
    }


def attributes_without_ttfc(span: ReadableSpan) -> dict[str, Any]:
    found = dict(span.attributes or {})
    ttfc = found.pop(semconv.GEN_AI_TIME_TO_FIRST_CHUNK)
    assert isinstance(ttfc, float)
    assert 0 < ttfc * 1e9 <= (span.end_time or 0) - (span.start_time or 0)
    return found


def messages(span: ReadableSpan, name: str) -> Any:
    return json.loads(str((span.attributes or {})[name]))


# --- plain calls ---------------------------------------------------------------------------------------------
class TestChat:
    """A chat completion is one CLIENT span ``chat {model}`` under the app's span, with the GenAI
    request and response attributes and the session's stamps, and nothing else."""

    def test_sync(self, spans: CapturedSpans, client: Any) -> None:
        with App() as app:
            answer = client.chat.completions.create(model=MODEL, messages=HELLO, temperature=0.2, max_tokens=50, seed=7)
        assert answer.choices[0].message.content == "Hello from the fake model."
        span = ai_span(spans)
        assert_child_of(span, app)
        assert dict(span.attributes or {}) == {
            **request(),
            semconv.GEN_AI_REQUEST_MODEL: MODEL,
            semconv.GEN_AI_REQUEST_TEMPERATURE: 0.2,
            semconv.GEN_AI_REQUEST_MAX_TOKENS: 50,
            semconv.GEN_AI_REQUEST_SEED: 7,
            **answered(),
            **app.stamps(),
        }
        assert span.status.status_code is StatusCode.UNSET
        assert span.events == ()

    def test_async(self, spans: CapturedSpans, server: FakeOpenAI) -> None:
        async def main() -> tuple[App, Any]:
            async with async_client(server) as sdk:
                with App() as app:
                    answer = await sdk.chat.completions.create(model=MODEL, messages=HELLO, stop=["\n"])
            return app, answer

        app, answer = asyncio.run(main())
        assert answer.usage.completion_tokens == len(fake_wire.REPLY)
        span = ai_span(spans)
        assert_child_of(span, app)
        assert dict(span.attributes or {}) == {
            **request(),
            semconv.GEN_AI_REQUEST_MODEL: MODEL,
            semconv.GEN_AI_REQUEST_STOP_SEQUENCES: ("\n",),
            **answered(),
            **app.stamps(),
        }

    def test_tool_call(self, spans: CapturedSpans, capture: None, client: Any) -> None:
        with App():
            answer = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "TOOL"}])
        assert answer.choices[0].message.tool_calls[0].function.name == fake_wire.TOOL_NAME
        span = ai_span(spans)
        assert (span.attributes or {})[semconv.GEN_AI_RESPONSE_FINISH_REASONS] == ("tool_calls",)
        assert messages(span, semconv.GEN_AI_OUTPUT_MESSAGES) == [
            {"role": "assistant", "parts": [TOOL_CALL_PART], "finish_reason": "tool_calls"}
        ]

    def test_parse_is_traced_too(self, spans: CapturedSpans, client: Any) -> None:
        with App() as app:
            parsed = client.chat.completions.parse(model=MODEL, messages=HELLO)
        assert parsed.choices[0].message.content == "Hello from the fake model."
        assert dict(ai_span(spans).attributes or {}) == {
            **request(),
            semconv.GEN_AI_REQUEST_MODEL: MODEL,
            **answered(),
            **app.stamps(),
        }

    def test_raw_response_keeps_working(self, spans: CapturedSpans, client: Any) -> None:
        """``with_raw_response`` hands back the HTTP response unparsed: the span has the request."""
        with App():
            raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=HELLO)
        assert raw.parse().id == fake_wire.RESPONSE_ID
        span = ai_span(spans)
        assert span.end_time is not None
        assert (span.attributes or {})[semconv.GEN_AI_REQUEST_MODEL] == MODEL


class TestContent:
    """Prompts and answers are recorded only when content capture is on, in the semconv shape,
    capped, with binary content replaced by markers; odd content never breaks the call."""

    CONVERSATION: list[dict[str, Any]] = [  # noqa: RUF012
        {"role": "developer", "content": "You triage insurance claims."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in this photo?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgoAAAANSUhEUg=="}},
                {"type": "image_url", "image_url": {"url": "https://example.com/dent.jpg"}},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_0",
                    "type": "function",
                    "function": {"name": "lookup_policy", "arguments": '{"policy": "P-1"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_0", "content": "policy P-1: comprehensive"},
    ]

    def test_off_records_no_messages(self, spans: CapturedSpans, client: Any) -> None:
        with App():
            client.chat.completions.create(model=MODEL, messages=self.CONVERSATION)
        attributes = ai_span(spans).attributes or {}
        assert semconv.GEN_AI_INPUT_MESSAGES not in attributes
        assert semconv.GEN_AI_OUTPUT_MESSAGES not in attributes
        assert semconv.GEN_AI_SYSTEM_INSTRUCTIONS not in attributes

    def test_on_records_messages_in_semconv_shape(self, spans: CapturedSpans, capture: None, client: Any) -> None:
        with App():
            client.chat.completions.create(model=MODEL, messages=self.CONVERSATION)
        span = ai_span(spans)
        assert messages(span, semconv.GEN_AI_INPUT_MESSAGES) == [
            {"role": "system", "parts": [{"type": "text", "content": "You triage insurance claims."}]},
            {
                "role": "user",
                "parts": [
                    {"type": "text", "content": "What is in this photo?"},
                    {"type": "blob", "modality": "image", "mime_type": "image/png", "content": "[image/png 16 bytes]"},
                    {"type": "uri", "modality": "image", "uri": "https://example.com/dent.jpg"},
                ],
            },
            {
                "role": "assistant",
                "parts": [
                    {"type": "tool_call", "id": "call_0", "name": "lookup_policy", "arguments": {"policy": "P-1"}}
                ],
            },
            {
                "role": "tool",
                "parts": [{"type": "tool_call_response", "id": "call_0", "response": "policy P-1: comprehensive"}],
            },
        ]
        assert messages(span, semconv.GEN_AI_OUTPUT_MESSAGES) == [
            {
                "role": "assistant",
                "parts": [{"type": "text", "content": "Hello from the fake model."}],
                "finish_reason": "stop",
            }
        ]

    def test_huge_prompt_is_capped(self, spans: CapturedSpans, capture: None, client: Any) -> None:
        prompt = "x" * 1_000_000
        with App():
            answer = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": prompt}])
        assert answer.id == fake_wire.RESPONSE_ID
        recorded = str((ai_span(spans).attributes or {})[semconv.GEN_AI_INPUT_MESSAGES])
        assert recorded.startswith('[{"role":"user","parts":[{"type":"text","content":"xxx')
        assert len(recorded) <= content.MAX_CONTENT_CHARS
        # still JSON in the semconv shape: the text is cut inside its part, with the marker there
        ((role, (part,)),) = [(message["role"], message["parts"]) for message in json.loads(recorded)]
        kept, _, marker = part["content"].partition("…")
        assert (role, part["type"], set(kept)) == ("user", "text", {"x"})
        assert marker == f"[truncated {len(prompt) - len(kept)} chars]"

    def test_content_json_cannot_encode_is_recorded_safely(
        self, spans: CapturedSpans, capture: None, client: Any
    ) -> None:
        """The SDK sends datetimes and pydantic models; the span gets their JSON form or a repr."""
        when = datetime.datetime(2025, 1, 2, 3, 4, 5)
        previous = client.chat.completions.create(model=MODEL, messages=HELLO).choices[0].message
        spans.clear()
        odd = {"type": "x-vendor-part", "sent_at": when}
        with App():
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": [odd]}, previous, *HELLO])
        recorded = messages(ai_span(spans), semconv.GEN_AI_INPUT_MESSAGES)
        assert recorded == [
            {
                "role": "user",
                "parts": [{"type": "x-vendor-part", "content": {"type": "x-vendor-part", "sent_at": repr(when)}}],
            },
            {"role": "assistant", "parts": [{"type": "text", "content": "Hello from the fake model."}]},
            {"role": "user", "parts": [{"type": "text", "content": "Say hello"}]},
        ]

    def test_content_the_sdk_cannot_send_fails_as_without_us(
        self, spans: CapturedSpans, capture: None, client: Any
    ) -> None:
        with App(), pytest.raises(TypeError, match="bytes"):
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": [b"\x00\x01"]}])
        span = ai_span(spans)
        assert (span.attributes or {})[semconv.ERROR_TYPE] == "TypeError"
        assert messages(span, semconv.GEN_AI_INPUT_MESSAGES) == [
            {"role": "user", "parts": [{"type": "unknown", "content": "[binary 2 bytes]"}]}
        ]


class TestConfidence:
    """Token log-probabilities become a ``confidence`` evaluation: their geometric mean."""

    EVENT = {  # noqa: RUF012
        semconv.GEN_AI_EVALUATION_NAME: "confidence",
        semconv.GEN_AI_EVALUATION_SCORE_VALUE: pytest.approx(CONFIDENCE),
        semconv.GEN_AI_EVALUATION_EXPLANATION: CONFIDENCE_EXPLANATION,
    }

    def test_from_logprobs(self, spans: CapturedSpans, client: Any) -> None:
        with App():
            client.chat.completions.create(model=MODEL, messages=HELLO, logprobs=True)
        span = ai_span(spans)
        assert [(event.name, dict(event.attributes or {})) for event in span.events] == [
            (semconv.GEN_AI_EVALUATION_EVENT, self.EVENT)
        ]
        assert (span.attributes or {})[semconv.GEN_AI_CONFIDENCE] == pytest.approx(CONFIDENCE)

    def test_from_streamed_logprobs(self, spans: CapturedSpans, client: Any) -> None:
        with App():
            for _ in client.chat.completions.create(model=MODEL, messages=HELLO, logprobs=True, stream=True):
                pass
        span = ai_span(spans)
        assert [(event.name, dict(event.attributes or {})) for event in span.events] == [
            (semconv.GEN_AI_EVALUATION_EVENT, self.EVENT)
        ]

    def test_none_without_logprobs(self, spans: CapturedSpans, client: Any) -> None:
        with App():
            client.chat.completions.create(model=MODEL, messages=HELLO)
        span = ai_span(spans)
        assert span.events == ()
        assert semconv.GEN_AI_CONFIDENCE not in (span.attributes or {})


# --- streams -------------------------------------------------------------------------------------------------
class TestStreaming:
    """A stream's span stays open while the caller reads it, notes the time to the first chunk,
    and ends at exhaustion with the finish reasons and usage of the last chunks."""

    def test_sync(self, spans: CapturedSpans, client: Any) -> None:
        with App() as app:
            stream = client.chat.completions.create(
                model=MODEL, messages=HELLO, stream=True, stream_options={"include_usage": True}
            )
            texts: list[str] = []
            for chunk in stream:
                assert not spans.named(f"chat {MODEL}"), "the span ended before the stream did"
                texts.extend(choice.delta.content or "" for choice in chunk.choices)
        assert "".join(texts) == "Hello from the fake model."
        span = ai_span(spans)
        assert_child_of(span, app)
        assert attributes_without_ttfc(span) == {
            **request(**STREAMED),
            semconv.GEN_AI_REQUEST_MODEL: MODEL,
            **answered(),
            **app.stamps(),
        }

    def test_async(self, spans: CapturedSpans, server: FakeOpenAI) -> None:
        async def main() -> tuple[App, list[str]]:
            async with async_client(server) as sdk:
                with App() as app:
                    stream = await sdk.chat.completions.create(
                        model=MODEL, messages=HELLO, stream=True, stream_options={"include_usage": True}
                    )
                    texts: list[str] = []
                    async for chunk in stream:
                        assert not spans.named(f"chat {MODEL}"), "the span ended before the stream did"
                        texts.extend(choice.delta.content or "" for choice in chunk.choices)
            return app, texts

        app, texts = asyncio.run(main())
        assert "".join(texts) == "Hello from the fake model."
        span = ai_span(spans)
        assert_child_of(span, app)
        assert attributes_without_ttfc(span) == {
            **request(**STREAMED),
            semconv.GEN_AI_REQUEST_MODEL: MODEL,
            **answered(),
            **app.stamps(),
        }

    def test_without_usage_option_has_no_tokens(self, spans: CapturedSpans, client: Any) -> None:
        with App():
            list(client.chat.completions.create(model=MODEL, messages=HELLO, stream=True))
        attributes = ai_span(spans).attributes or {}
        assert semconv.GEN_AI_USAGE_INPUT_TOKENS not in attributes
        assert attributes[semconv.GEN_AI_RESPONSE_FINISH_REASONS] == ("stop",)

    def test_tool_call_deltas_are_assembled(self, spans: CapturedSpans, capture: None, client: Any) -> None:
        with App():
            stream = client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "TOOL"}], tools=TOOLS, stream=True
            )
            for _ in stream:
                pass
        span = ai_span(spans)
        assert (span.attributes or {})[semconv.GEN_AI_RESPONSE_FINISH_REASONS] == ("tool_calls",)
        assert messages(span, semconv.GEN_AI_OUTPUT_MESSAGES) == [
            {
                "role": "assistant",
                "parts": [TOOL_CALL_PART],
                "finish_reason": "tool_calls",
            }
        ]

    def test_streamed_text_is_captured(self, spans: CapturedSpans, capture: None, client: Any) -> None:
        with App():
            list(client.chat.completions.create(model=MODEL, messages=HELLO, stream=True))
        assert messages(ai_span(spans), semconv.GEN_AI_OUTPUT_MESSAGES) == [
            {
                "role": "assistant",
                "parts": [{"type": "text", "content": "Hello from the fake model."}],
                "finish_reason": "stop",
            }
        ]

    def test_behaves_like_the_sdk_stream(self, spans: CapturedSpans, client: Any) -> None:
        with App():
            stream = client.chat.completions.create(model=MODEL, messages=HELLO, stream=True)
            assert isinstance(stream, openai.Stream)
            assert stream.response.status_code == 200
            with stream as entered:
                assert entered is stream
                first = next(stream)
                assert first.id == fake_wire.RESPONSE_ID
                rest = list(entered)
        assert rest[-1].choices[0].finish_reason == "stop"
        assert ai_span(spans).end_time is not None

    def test_stream_helper(self, spans: CapturedSpans, client: Any) -> None:
        """``chat.completions.stream()`` calls ``create(stream=True)``: one span, fully recorded."""
        with App() as app, client.chat.completions.stream(model=MODEL, messages=HELLO) as stream:
            final = stream.get_final_completion()
        assert final.choices[0].message.content == "Hello from the fake model."
        span = ai_span(spans)
        assert_child_of(span, app)
        assert (span.attributes or {})[semconv.GEN_AI_RESPONSE_FINISH_REASONS] == ("stop",)


class TestAbandonedStream:
    """A stream the caller leaves after one chunk still ends its span, with what was seen."""

    @staticmethod
    def assert_ended_with_first_chunk(spans: CapturedSpans, app: App) -> None:
        span = ai_span(spans)
        assert_child_of(span, app)
        assert attributes_without_ttfc(span) == {
            **request(**STREAMED),
            semconv.GEN_AI_REQUEST_MODEL: MODEL,
            semconv.GEN_AI_RESPONSE_MODEL: ANSWERED_BY,
            semconv.GEN_AI_RESPONSE_ID: fake_wire.RESPONSE_ID,
            **app.stamps(),
        }
        assert span.status.status_code is StatusCode.UNSET

    @pytest.mark.parametrize("how", ["close", "with", "garbage collected"])
    def test_sync(self, spans: CapturedSpans, client: Any, how: str) -> None:
        with App() as app:
            stream = client.chat.completions.create(model=MODEL, messages=HELLO, stream=True)
            if how == "with":
                with stream:
                    for _ in stream:
                        break
            else:
                for _ in stream:
                    break
                assert not spans.named(f"chat {MODEL}")
                if how == "close":
                    stream.close()
                else:
                    del stream
                    gc.collect()
        self.assert_ended_with_first_chunk(spans, app)

    @pytest.mark.parametrize("how", ["close", "async with"])
    def test_async(self, spans: CapturedSpans, server: FakeOpenAI, how: str) -> None:
        async def main() -> App:
            async with async_client(server) as sdk:
                with App() as app:
                    stream = await sdk.chat.completions.create(model=MODEL, messages=HELLO, stream=True)
                    if how == "async with":
                        async with stream:
                            async for _ in stream:
                                break
                    else:
                        async for _ in stream:
                            break
                        await stream.close()
            return app

        app = asyncio.run(main())
        self.assert_ended_with_first_chunk(spans, app)

    def test_closing_twice_ends_once(self, spans: CapturedSpans, client: Any, caplog: pytest.LogCaptureFixture) -> None:
        with App():
            stream = client.chat.completions.create(model=MODEL, messages=HELLO, stream=True)
            next(stream)
            stream.close()
            stream.close()
            del stream
            gc.collect()
        assert len(spans.named(f"chat {MODEL}")) == 1
        assert "ended span" not in caplog.text


# --- errors --------------------------------------------------------------------------------------------------
class TestErrors:
    """A failed call ends its span as an error (``error.type``: the HTTP status of an API error,
    else the exception's class) and the SDK's exception reaches the caller unchanged."""

    @pytest.mark.parametrize(
        ("prompt", "exception", "error_type"),
        [
            ("FAIL 500", "InternalServerError", "500"),
            ("FAIL 429", "RateLimitError", "429"),
            ("SLOW", "APITimeoutError", "APITimeoutError"),
        ],
    )
    def test_sync(self, spans: CapturedSpans, client: Any, prompt: str, exception: str, error_type: str) -> None:
        with App() as app, pytest.raises(getattr(openai, exception)):
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": prompt}], timeout=0.3)
        span = ai_span(spans)
        assert_child_of(span, app)
        assert dict(span.attributes or {}) == {
            **request(),
            semconv.GEN_AI_REQUEST_MODEL: MODEL,
            semconv.ERROR_TYPE: error_type,
            **app.stamps(),
        }
        assert span.status.status_code is StatusCode.ERROR
        assert [event.name for event in span.events] == ["exception"]
        assert str((span.events[0].attributes or {})["exception.type"]).endswith(exception)

    def test_async(self, spans: CapturedSpans, server: FakeOpenAI) -> None:
        async def main() -> None:
            async with async_client(server) as sdk:
                with App():
                    await sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "FAIL 500"}])

        with pytest.raises(openai.InternalServerError):
            asyncio.run(main())
        span = ai_span(spans)
        assert (span.attributes or {})[semconv.ERROR_TYPE] == "500"
        assert span.status.status_code is StatusCode.ERROR

    def test_stream_that_cannot_start(self, spans: CapturedSpans, client: Any) -> None:
        with App(), pytest.raises(openai.RateLimitError):
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "FAIL 429"}], stream=True)
        assert (ai_span(spans).attributes or {})[semconv.ERROR_TYPE] == "429"

    def test_our_failure_never_reaches_the_app(
        self, spans: CapturedSpans, client: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        def broken(*args: Any) -> None:
            raise RuntimeError("bookkeeping bug")

        monkeypatch.setattr(instrumentation._Chat, "record", broken)
        monkeypatch.setattr(instrumentation._ChatStream, "absorb", broken)
        with App():
            answer = client.chat.completions.create(model=MODEL, messages=HELLO)
            chunks = list(client.chat.completions.create(model=MODEL, messages=HELLO, stream=True))
        assert answer.id == fake_wire.RESPONSE_ID
        assert len(chunks) == len(fake_wire.REPLY) + 2
        assert all(span.end_time is not None for span in spans.named(f"chat {MODEL}"))
        assert len(spans.named(f"chat {MODEL}")) == 2


# --- Responses API -------------------------------------------------------------------------------------------
class TestResponses:
    """``responses.create`` is a ``chat`` span too; the terminal event of a stream carries the answer."""

    def expected(self, app: App, **extra: Any) -> dict[str, Any]:
        return {
            **request(),
            semconv.GEN_AI_REQUEST_MODEL: MODEL,
            **answered(),
            semconv.GEN_AI_RESPONSE_ID: fake_wire.RESPONSES_ID,
            **app.stamps(),
            **extra,
        }

    def test_sync(self, spans: CapturedSpans, client: Any) -> None:
        with App() as app:
            answer = client.responses.create(model=MODEL, input="Say hello", max_output_tokens=50)
        assert answer.output_text == "Hello from the fake model."
        span = ai_span(spans)
        assert_child_of(span, app)
        assert dict(span.attributes or {}) == self.expected(app, **{semconv.GEN_AI_REQUEST_MAX_TOKENS: 50})

    def test_stream_async(self, spans: CapturedSpans, server: FakeOpenAI) -> None:
        async def main() -> App:
            async with async_client(server) as sdk:
                with App() as app:
                    async for _ in await sdk.responses.create(model=MODEL, input="Say hello", stream=True):
                        pass
            return app

        app = asyncio.run(main())
        span = ai_span(spans)
        assert_child_of(span, app)
        assert attributes_without_ttfc(span) == self.expected(app, **STREAMED)

    def test_content_and_tool_call(self, spans: CapturedSpans, capture: None, client: Any) -> None:
        with App():
            client.responses.create(model=MODEL, instructions="Be brief.", input="TOOL: weather in Paris?")
        span = ai_span(spans)
        assert (span.attributes or {})[semconv.GEN_AI_RESPONSE_FINISH_REASONS] == ("tool_calls",)
        assert messages(span, semconv.GEN_AI_SYSTEM_INSTRUCTIONS) == [{"type": "text", "content": "Be brief."}]
        assert messages(span, semconv.GEN_AI_INPUT_MESSAGES) == [
            {"role": "user", "parts": [{"type": "text", "content": "TOOL: weather in Paris?"}]}
        ]
        assert messages(span, semconv.GEN_AI_OUTPUT_MESSAGES) == [
            {"role": "assistant", "parts": [TOOL_CALL_PART], "finish_reason": "tool_calls"}
        ]


# --- instrumenting -------------------------------------------------------------------------------------------
class TestInstrumentor:
    """``uninstrument()`` gives the SDK back exactly as it was; a method the SDK lacks is
    reported once and skipped."""

    def test_uninstrument_restores_the_sdk(self, capsession: CapturedSpans, client: Any) -> None:
        targets = [
            instrumentation._find(module, owner, method) for module, owner, method, *_ in instrumentation._TARGETS
        ]
        originals = [
            (cls, method, cls.__dict__[method])
            for cls, (_, _, method, *_) in zip(targets, instrumentation._TARGETS, strict=True)
            if cls
        ]
        assert len(originals) == len(instrumentation._TARGETS)
        instrumentor = OpenAIInstrumentor()
        instrumentor.instrument()
        try:
            assert all(cls.__dict__[method] is not original for cls, method, original in originals)
        finally:
            instrumentor.uninstrument()
        assert all(cls.__dict__[method] is original for cls, method, original in originals)
        client.chat.completions.create(model=MODEL, messages=HELLO)
        assert not capsession.named(f"chat {MODEL}")

    def test_another_librarys_wrapper_keeps_working_under_and_over_ours(
        self, capsession: CapturedSpans, client: Any
    ) -> None:
        from openai.resources.chat.completions import Completions
        from wrapt import wrap_function_wrapper

        plain = Completions.__dict__["create"]
        seen: list[Any] = []

        def theirs(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
            seen.append(instance)  # an instrumentor reads the client through the instance
            return wrapped(*args, **kwargs)

        try:
            wrap_function_wrapper(Completions, "create", theirs)  # installed before ours
            under = Completions.__dict__["create"]
            instrumentor = OpenAIInstrumentor()
            instrumentor.instrument()
            try:
                client.chat.completions.create(model=MODEL, messages=HELLO)
            finally:
                instrumentor.uninstrument()
            assert seen == [client.chat.completions]
            assert len(capsession.named(f"chat {MODEL}")) == 1
            assert Completions.__dict__["create"] is under  # theirs is back as it was

            instrumentor.instrument()
            wrap_function_wrapper(Completions, "create", theirs)  # installed over ours
            instrumentor.uninstrument()  # ours cannot come out from under theirs: it stops tracing
            client.chat.completions.create(model=MODEL, messages=HELLO)
            assert len(seen) == 3  # theirs twice on the last call: over ours and under it
            assert len(capsession.named(f"chat {MODEL}")) == 1
        finally:
            Completions.create = plain  # type: ignore[method-assign]

    def test_spans_go_to_the_tracer_provider_it_was_given(self, capsession: CapturedSpans, client: Any) -> None:
        """``instrument(tracer_provider=...)``, as every OpenTelemetry instrumentor takes it: an
        application with a provider of its own, not the global one, gets the spans there."""
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        exporter = InMemorySpanExporter()
        own = TracerProvider()
        own.add_span_processor(SimpleSpanProcessor(exporter))
        instrumentor = OpenAIInstrumentor()
        instrumentor.instrument(tracer_provider=own)
        try:
            client.chat.completions.create(model=MODEL, messages=HELLO)
            for _ in client.chat.completions.create(model=MODEL, messages=HELLO, stream=True):
                pass
        finally:
            instrumentor.uninstrument()
        assert [(span.name, span.instrumentation_scope.name) for span in exporter.get_finished_spans()] == [
            (f"chat {MODEL}", "sessiontrace.ai")
        ] * 2
        assert not capsession.named(f"chat {MODEL}")

        instrumentor.instrument()  # and without one, the global provider again
        try:
            client.chat.completions.create(model=MODEL, messages=HELLO)
        finally:
            instrumentor.uninstrument()
        assert len(capsession.named(f"chat {MODEL}")) == 1
        assert len(exporter.get_finished_spans()) == 2

    def test_suppressed_instrumentation_makes_no_span(self, capsession: CapturedSpans, client: Any) -> None:
        from opentelemetry.instrumentation.utils import suppress_instrumentation

        instrumentor = OpenAIInstrumentor()
        instrumentor.instrument()
        try:
            with suppress_instrumentation():
                answer = client.chat.completions.create(model=MODEL, messages=HELLO)
                chunks = list(client.chat.completions.create(model=MODEL, messages=HELLO, stream=True))
            assert answer.choices[0].message.content == "".join(fake_wire.REPLY)
            assert chunks
            assert not capsession.named(f"chat {MODEL}")
            client.chat.completions.create(model=MODEL, messages=HELLO)  # and traced again after
        finally:
            instrumentor.uninstrument()
        assert len(capsession.named(f"chat {MODEL}")) == 1

    def test_a_tracer_provider_that_is_not_one_is_refused_before_anything_changes(self) -> None:
        from openai.resources.chat.completions import Completions

        plain = Completions.__dict__["create"]
        with pytest.raises(TypeError, match="tracer_provider must be an OpenTelemetry TracerProvider, got str"):
            OpenAIInstrumentor().instrument(tracer_provider="jaeger")
        assert Completions.__dict__["create"] is plain
        assert not OpenAIInstrumentor().is_instrumented_by_opentelemetry

    def test_a_method_mocked_before_instrumenting_still_answers(self, capsession: CapturedSpans, client: Any) -> None:
        from unittest import mock

        from openai.resources.chat.completions import Completions

        with mock.patch.object(Completions, "create", return_value="canned") as create:
            instrumentor = OpenAIInstrumentor()
            instrumentor.instrument()
            try:
                answer = client.chat.completions.create(model=MODEL, messages=HELLO)
            finally:
                instrumentor.uninstrument()
            assert Completions.__dict__["create"] is create
        assert answer == "canned"
        create.assert_called_once_with(model=MODEL, messages=HELLO)  # as the unbound Mock was called

    def test_missing_method_warns_once_and_skips(
        self, capsession: CapturedSpans, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        missing = ("openai.resources.chat.completions", "Completions", "create_v9", instrumentation._CHAT, False, True)
        monkeypatch.setattr(instrumentation, "_TARGETS", (missing, missing))
        reset_warnings()
        instrumentor = OpenAIInstrumentor()
        with caplog.at_level(logging.WARNING, logger="sessiontrace"):
            instrumentor.instrument()
        instrumentor.uninstrument()
        assert [record.getMessage() for record in caplog.records] == [
            f"sessiontrace: openai {openai.__version__} has no "
            "openai.resources.chat.completions.Completions.create_v9; those calls are not traced"
        ]


# --- the session on the wire ------------------------------------------------------------------------------
@pytest.mark.usefixtures("outbound_policy")
class TestOutboundPolicy:
    """The SDK injects nothing itself; with the outbound policy instrumentor on (it patches httpx2,
    which the SDK sends with) the trace and the session go to an allowed host, and nothing of ours
    to any other."""

    def test_allowed_host_receives_the_session(self, spans: CapturedSpans, client: Any, server: FakeOpenAI) -> None:
        with session(user_id="alice") as current, tracer.start_as_current_span("handle"):
            client.chat.completions.create(model=MODEL, messages=HELLO)
        headers = server.headers[-1]
        assert f"{semconv.BAGGAGE_SESSION_ID}={current.id}" in headers["baggage"]
        _, trace_id, parent_id, _ = headers["traceparent"].split("-")
        context = ai_span(spans).get_span_context()
        assert (int(trace_id, 16), int(parent_id, 16)) == (context.trace_id, context.span_id)

    def test_other_host_does_not(self, spans: CapturedSpans, client: Any, server: FakeOpenAI, reconfigure: Any) -> None:
        reconfigure(outbound=OutboundPolicy(("api.example.org",)))
        with session(user_id="alice") as current, tracer.start_as_current_span("handle"):
            client.chat.completions.create(model=MODEL, messages=HELLO)
        headers = server.headers[-1]
        assert current.id not in headers.get("baggage", "")
        assert "alice" not in headers.get("baggage", "")
        assert "traceparent" not in headers
        assert ai_span(spans).attributes[semconv.SESSION_ID] == current.id  # the span itself has it
