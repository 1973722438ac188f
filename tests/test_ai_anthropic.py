"""``AnthropicInstrumentor``: calls through the real ``anthropic`` client, against a fake Anthropic
API on loopback (tests/_fake_anthropic.py), become GenAI spans with exact semantic attributes,
children of the application's span, stamped with its session."""

from __future__ import annotations

import asyncio
import base64
import gc
import json
import logging
from collections.abc import Iterator
from typing import Any

import anthropic
import pytest
from anthropic.resources.messages import AsyncMessages, Messages
from anthropic.types import MessageParam, ToolParam
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode

import _fake_anthropic as fake_api
from _fake_anthropic import (
    ANSWER,
    CACHE_READ_TOKENS,
    CACHE_WRITE_TOKENS,
    INPUT_TOKENS,
    OUTPUT_TOKENS,
    TOOL_ID,
    TOOL_INPUT,
    TOOL_NAME,
    TOOL_TEXT,
    FakeAnthropic,
)
from sessiontrace import semconv
from sessiontrace._log import reset_warnings
from sessiontrace.ai.anthropic import AnthropicInstrumentor
from sessiontrace.ai.content import MAX_CONTENT_CHARS, set_capture_content
from sessiontrace.context import session
from sessiontrace.policy import OutboundPolicy
from sessiontrace.testing import CapturedSpans

MODEL = "claude-sonnet-4-6"
ANSWERED_BY = fake_api.response_model(MODEL)
SDK_SCOPE = "com.anthropic.sdk.python"
tracer = trace.get_tracer("sessiontrace_tests.anthropic")

ORIGINALS: dict[tuple[type[Any], str], Any] = {
    (Messages, "create"): Messages.create,
    (AsyncMessages, "create"): AsyncMessages.create,
    (Messages, "stream"): Messages.stream,
    (AsyncMessages, "stream"): AsyncMessages.stream,
}


SERVER: dict[str, Any] = {}
"""``server.address`` and ``server.port`` of the fake API, set when it starts."""


# --- fixtures -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fake() -> Iterator[FakeAnthropic]:
    server = fake_api.start()
    SERVER.update({semconv.SERVER_ADDRESS: "127.0.0.1", semconv.SERVER_PORT: server.server.server_address[1]})
    try:
        yield server
    finally:
        fake_api.stop(server)


@pytest.fixture
def instrumented(capsession: CapturedSpans) -> Iterator[None]:
    AnthropicInstrumentor().instrument()
    try:
        yield
    finally:
        AnthropicInstrumentor().uninstrument()


@pytest.fixture
def client(fake: FakeAnthropic) -> Iterator[anthropic.Anthropic]:
    fake.requests.clear()
    with anthropic.Anthropic(base_url=fake.base_url, api_key="test", max_retries=0) as sdk:
        yield sdk


@pytest.fixture
def async_client(fake: FakeAnthropic) -> anthropic.AsyncAnthropic:
    fake.requests.clear()
    return anthropic.AsyncAnthropic(base_url=fake.base_url, api_key="test", max_retries=0)


@pytest.fixture(params=[False], ids=["capture-off"])
def capture(request: pytest.FixtureRequest) -> Iterator[bool]:
    """Content capture off unless a test parametrizes it on; restored to the environment's say."""
    set_capture_content(request.param)
    try:
        yield request.param
    finally:
        set_capture_content(None)


@pytest.fixture
def capture_on() -> Iterator[None]:
    set_capture_content(True)
    try:
        yield
    finally:
        set_capture_content(None)


# --- helpers --------------------------------------------------------------------------------------------
def user(text: str) -> list[MessageParam]:
    return [{"role": "user", "content": text}]


def ai_spans(captured: CapturedSpans) -> list[ReadableSpan]:
    return [
        span
        for span in captured.spans
        if span.instrumentation_scope and span.instrumentation_scope.name == "sessiontrace.ai"
    ]


def the_ai_span(captured: CapturedSpans) -> ReadableSpan:
    spans = ai_spans(captured)
    assert len(spans) == 1, [span.name for span in captured.spans]
    return spans[0]


def sdk_spans(captured: CapturedSpans) -> list[ReadableSpan]:
    return [
        span for span in captured.spans if span.instrumentation_scope and span.instrumentation_scope.name == SDK_SCOPE
    ]


def attributes(span: ReadableSpan) -> dict[str, Any]:
    """The span's attributes, lists as lists (the SDK stores tuples)."""
    return {key: list(value) if isinstance(value, tuple) else value for key, value in (span.attributes or {}).items()}


def without_ttfc(span: ReadableSpan) -> tuple[dict[str, Any], float]:
    """Attributes without the time to first chunk, and that time, checked to lie within the span."""
    found = attributes(span)
    ttfc = found.pop(semconv.GEN_AI_TIME_TO_FIRST_CHUNK)
    assert span.start_time is not None
    assert span.end_time is not None
    assert 0 < ttfc <= (span.end_time - span.start_time) / 1e9
    return found, ttfc


def response_attributes(
    response_id: str, *, finish: str = "end_turn", input_tokens: int = INPUT_TOKENS
) -> dict[str, Any]:
    return {
        semconv.GEN_AI_RESPONSE_MODEL: ANSWERED_BY,
        semconv.GEN_AI_RESPONSE_ID: response_id,
        semconv.GEN_AI_RESPONSE_FINISH_REASONS: [finish],
        semconv.GEN_AI_USAGE_INPUT_TOKENS: input_tokens,
        semconv.GEN_AI_USAGE_OUTPUT_TOKENS: OUTPUT_TOKENS,
        # reported by the API on every answer, 0 without prompt caching
        semconv.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS: 0,
        semconv.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS: 0,
    }


def request_attributes(sid: str, max_tokens: int = 64, *, stream: bool = False) -> dict[str, Any]:
    return {
        semconv.GEN_AI_OPERATION_NAME: "chat",
        semconv.GEN_AI_PROVIDER_NAME: "anthropic",
        semconv.GEN_AI_REQUEST_MODEL: MODEL,
        semconv.GEN_AI_REQUEST_MAX_TOKENS: max_tokens,
        **({semconv.GEN_AI_REQUEST_STREAM: True} if stream else {}),
        **SERVER,
        semconv.SESSION_ID: sid,
    }


def assert_structure(captured: CapturedSpans, app_span_name: str) -> ReadableSpan:
    """The AI span is a CLIENT child of the app span; the SDK's own span is a child of it."""
    (app,) = captured.named(app_span_name)
    ours = the_ai_span(captured)
    assert ours.name == f"chat {MODEL}"
    assert ours.kind is SpanKind.CLIENT
    assert ours.parent is not None
    assert ours.parent.span_id == app.context.span_id
    assert ours.context.trace_id == app.context.trace_id
    for inner in sdk_spans(captured):
        assert inner.parent is not None
        assert inner.parent.span_id == ours.context.span_id
    return ours


def decoded(span: ReadableSpan, name: str) -> Any:
    value = (span.attributes or {})[name]
    assert isinstance(value, str)
    return json.loads(value)


def ours_unfinished(captured: CapturedSpans) -> bool:
    return not ai_spans(captured)


# --- non-streaming ----------------------------------------------------------------------------------------
@pytest.mark.usefixtures("instrumented", "capture")
class TestCreate:
    """``messages.create`` (sync and async): one span with the request and the response."""

    def test_sync_call_is_a_client_span_under_the_app_span(
        self, client: anthropic.Anthropic, capsession: CapturedSpans
    ) -> None:
        with session() as current, tracer.start_as_current_span("handle claim"):
            message = client.messages.create(model=MODEL, max_tokens=64, messages=user("Hi"))
        assert message.content[0].type == "text"
        assert message.content[0].text == ANSWER

        ours = assert_structure(capsession, "handle claim")
        assert attributes(ours) == {**request_attributes(current.id), **response_attributes(message.id)}
        assert ours.status.status_code is StatusCode.UNSET
        assert ours.events == ()
        assert len(sdk_spans(capsession)) == 1

    def test_async_call(self, async_client: anthropic.AsyncAnthropic, capsession: CapturedSpans) -> None:
        async def main() -> tuple[str, anthropic.types.Message]:
            async with session() as current:
                with tracer.start_as_current_span("handle claim"):
                    message = await async_client.messages.create(model=MODEL, max_tokens=64, messages=user("Hi"))
                await async_client.close()
            return current.id, message

        sid, message = asyncio.run(main())
        ours = assert_structure(capsession, "handle claim")
        assert attributes(ours) == {**request_attributes(sid), **response_attributes(message.id)}

    def test_request_settings(self, client: anthropic.Anthropic, capsession: CapturedSpans) -> None:
        with session() as current:
            client.messages.create(
                model=MODEL,
                max_tokens=200,
                stop_sequences=["END", "STOP"],
                # the 2.x SDK has no argument for these: they travel in the body
                extra_body={"temperature": 0.25, "top_p": 0.9, "top_k": 5, "max_tokens": 1},
                messages=user("Hi"),
            )
        found = attributes(the_ai_span(capsession))
        assert {key: value for key, value in found.items() if key.startswith("gen_ai.request.")} == {
            semconv.GEN_AI_REQUEST_MODEL: MODEL,
            semconv.GEN_AI_REQUEST_MAX_TOKENS: 200,
            semconv.GEN_AI_REQUEST_TEMPERATURE: 0.25,
            semconv.GEN_AI_REQUEST_TOP_P: 0.9,
            semconv.GEN_AI_REQUEST_TOP_K: 5.0,  # a double in the conventions
            semconv.GEN_AI_REQUEST_STOP_SEQUENCES: ["END", "STOP"],
        }
        assert found[semconv.SESSION_ID] == current.id

    def test_tool_use_answer(self, client: anthropic.Anthropic, capsession: CapturedSpans) -> None:
        with session() as current:
            message = client.messages.create(
                model=MODEL,
                max_tokens=64,
                tools=[{"name": TOOL_NAME, "description": "Look up a policy", "input_schema": {"type": "object"}}],
                messages=user("TOOL: what is the status of P-1?"),
            )
        assert message.stop_reason == "tool_use"
        assert attributes(the_ai_span(capsession)) == {
            **request_attributes(current.id),
            **response_attributes(message.id, finish="tool_use"),
        }

    def test_input_tokens_include_prompt_cache_reads_and_writes(
        self, client: anthropic.Anthropic, capsession: CapturedSpans
    ) -> None:
        message = client.messages.create(model=MODEL, max_tokens=64, messages=user("CACHED question"))
        assert message.usage.input_tokens == INPUT_TOKENS
        found = attributes(the_ai_span(capsession))
        assert found[semconv.GEN_AI_USAGE_INPUT_TOKENS] == INPUT_TOKENS + CACHE_WRITE_TOKENS + CACHE_READ_TOKENS
        assert found[semconv.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] == CACHE_READ_TOKENS
        assert found[semconv.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS] == CACHE_WRITE_TOKENS

    def test_raw_response_call_is_traced_without_a_response(
        self, client: anthropic.Anthropic, capsession: CapturedSpans
    ) -> None:
        raw = client.messages.with_raw_response.create(model=MODEL, max_tokens=64, messages=user("Hi"))
        assert raw.parse().content[0].type == "text"
        found = attributes(the_ai_span(capsession))
        assert found[semconv.GEN_AI_REQUEST_MODEL] == MODEL
        assert semconv.GEN_AI_RESPONSE_ID not in found


# --- content capture ------------------------------------------------------------------------------------
TOOL_SCHEMA: ToolParam = {"name": TOOL_NAME, "description": "Look up a policy", "input_schema": {"type": "object"}}
PIXEL = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 60).decode()  # 68 bytes


@pytest.mark.usefixtures("instrumented")
class TestContent:
    """Prompts and answers are recorded only when capture is on, in the semconv message shape, with
    binary content as a marker and everything capped."""

    def conversation(self, client: anthropic.Anthropic) -> anthropic.types.Message:
        first = client.messages.create(
            model=MODEL, max_tokens=64, tools=[TOOL_SCHEMA], messages=user("TOOL: status of P-1?")
        )
        return client.messages.create(
            model=MODEL,
            max_tokens=64,
            system=[{"type": "text", "text": "You are a claims assistant."}, {"type": "text", "text": "Be brief."}],
            tools=[TOOL_SCHEMA],
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "TOOL: status of P-1?"},
                        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PIXEL}},
                        {"type": "image", "source": {"type": "url", "url": "https://example.org/car.jpg"}},
                        {
                            "type": "document",
                            "source": {"type": "base64", "media_type": "application/pdf", "data": PIXEL},
                        },
                    ],
                },
                {"role": "assistant", "content": first.content},  # the SDK's own block models, passed back
                {
                    "role": "user",
                    "content": [{"type": "tool_result", "tool_use_id": TOOL_ID, "content": "active"}],
                },
            ],
        )

    def test_off_records_no_content(self, client: anthropic.Anthropic, capsession: CapturedSpans) -> None:
        set_capture_content(False)
        try:
            self.conversation(client)
        finally:
            set_capture_content(None)
        for span in ai_spans(capsession):
            found = attributes(span)
            for name in (
                semconv.GEN_AI_INPUT_MESSAGES,
                semconv.GEN_AI_OUTPUT_MESSAGES,
                semconv.GEN_AI_SYSTEM_INSTRUCTIONS,
            ):
                assert name not in found

    @pytest.mark.usefixtures("capture_on")
    def test_on_records_system_input_and_output(self, client: anthropic.Anthropic, capsession: CapturedSpans) -> None:
        self.conversation(client)
        first, second = ai_spans(capsession)
        assert decoded(first, semconv.GEN_AI_OUTPUT_MESSAGES) == [
            {
                "role": "assistant",
                "parts": [
                    {"type": "text", "content": TOOL_TEXT},
                    {"type": "tool_call", "id": TOOL_ID, "name": TOOL_NAME, "arguments": TOOL_INPUT},
                ],
                "finish_reason": "tool_use",
            }
        ]
        assert decoded(second, semconv.GEN_AI_SYSTEM_INSTRUCTIONS) == [
            {"type": "text", "content": "You are a claims assistant."},
            {"type": "text", "content": "Be brief."},
        ]
        assert decoded(second, semconv.GEN_AI_INPUT_MESSAGES) == [
            {
                "role": "user",
                "parts": [
                    {"type": "text", "content": "TOOL: status of P-1?"},
                    {"type": "image", "mime_type": "image/png", "content": "[image/png 68 bytes]"},
                    {"type": "uri", "modality": "image", "uri": "https://example.org/car.jpg"},
                    {"type": "document", "mime_type": "application/pdf", "content": "[application/pdf 68 bytes]"},
                ],
            },
            {
                "role": "assistant",
                "parts": [
                    {"type": "text", "content": TOOL_TEXT},
                    {"type": "tool_call", "id": TOOL_ID, "name": TOOL_NAME, "arguments": TOOL_INPUT},
                ],
            },
            {"role": "user", "parts": [{"type": "tool_call_response", "id": TOOL_ID, "response": "active"}]},
        ]
        assert PIXEL not in str(second.attributes)

    @pytest.mark.usefixtures("capture_on")
    def test_plain_string_system_prompt(self, client: anthropic.Anthropic, capsession: CapturedSpans) -> None:
        client.messages.create(model=MODEL, max_tokens=64, system="Be brief.", messages=user("Hi"))
        span = the_ai_span(capsession)
        assert decoded(span, semconv.GEN_AI_SYSTEM_INSTRUCTIONS) == [{"type": "text", "content": "Be brief."}]
        assert decoded(span, semconv.GEN_AI_INPUT_MESSAGES) == [
            {"role": "user", "parts": [{"type": "text", "content": "Hi"}]}
        ]
        assert decoded(span, semconv.GEN_AI_OUTPUT_MESSAGES) == [
            {"role": "assistant", "parts": [{"type": "text", "content": ANSWER}], "finish_reason": "end_turn"}
        ]

    @pytest.mark.usefixtures("capture_on")
    def test_huge_prompt_is_capped(
        self, client: anthropic.Anthropic, fake: FakeAnthropic, capsession: CapturedSpans
    ) -> None:
        prompt = "x" * (MAX_CONTENT_CHARS * 4)
        client.messages.create(model=MODEL, max_tokens=64, messages=user(prompt))
        assert fake.requests[-1].body["messages"][0]["content"] == prompt  # the call itself is untouched
        recorded = (the_ai_span(capsession).attributes or {})[semconv.GEN_AI_INPUT_MESSAGES]
        assert isinstance(recorded, str)
        assert recorded.startswith('[{"role":"user","parts":[{"type":"text","content":"xxx')
        assert len(recorded) <= MAX_CONTENT_CHARS
        # still JSON in the semconv shape: the text is cut inside its part, with the marker there
        ((role, (part,)),) = [(message["role"], message["parts"]) for message in json.loads(recorded)]
        kept, _, marker = part["content"].partition("…")
        assert (role, part["type"], set(kept)) == ("user", "text", {"x"})
        assert marker == f"[truncated {len(prompt) - len(kept)} chars]"

    @pytest.mark.usefixtures("capture_on")
    def test_odd_content_fails_as_it_would_untraced(
        self, client: anthropic.Anthropic, capsession: CapturedSpans
    ) -> None:
        class Unknown:
            def __repr__(self) -> str:
                return "<Unknown>"

        odd: Any = [{"role": "user", "content": [{"type": "text", "text": "Hi"}, b"\x00\x01\x02", Unknown()]}]
        with pytest.raises(TypeError) as traced:
            client.messages.create(model=MODEL, max_tokens=64, messages=odd)
        untraced_create = ORIGINALS[(Messages, "create")]
        with pytest.raises(TypeError) as untraced:
            untraced_create(client.messages, model=MODEL, max_tokens=64, messages=odd)
        assert str(traced.value) == str(untraced.value)  # the SDK's own error, unchanged

        span = the_ai_span(capsession)
        assert decoded(span, semconv.GEN_AI_INPUT_MESSAGES) == [
            {
                "role": "user",
                "parts": [
                    {"type": "text", "content": "Hi"},
                    {"type": "unknown", "content": "[binary 3 bytes]"},
                    {"type": "unknown", "content": "<Unknown>"},
                ],
            }
        ]
        assert (span.attributes or {})[semconv.ERROR_TYPE] == "TypeError"

    @pytest.mark.usefixtures("capture_on")
    def test_messages_given_as_an_iterator_reach_the_provider(
        self, client: anthropic.Anthropic, fake: FakeAnthropic, capsession: CapturedSpans
    ) -> None:
        client.messages.create(model=MODEL, max_tokens=64, messages=iter(user("Hi")))
        assert fake.requests[-1].body["messages"] == user("Hi")
        assert semconv.GEN_AI_INPUT_MESSAGES not in attributes(the_ai_span(capsession))  # not consumed by us


# --- streaming ------------------------------------------------------------------------------------------
STREAMED = {"role": "assistant", "parts": [{"type": "text", "content": ANSWER}], "finish_reason": "end_turn"}


@pytest.mark.usefixtures("instrumented")
class TestStreaming:
    """``stream=True`` and ``messages.stream()``: the span stays open while the caller reads, records
    the time to the first event, and ends at the last one with the stop reason and usage."""

    @pytest.mark.usefixtures("capture_on")
    def test_sync_stream_ends_after_exhaustion(self, client: anthropic.Anthropic, capsession: CapturedSpans) -> None:
        with session() as current, tracer.start_as_current_span("handle claim"):
            stream = client.messages.create(model=MODEL, max_tokens=64, messages=user("Hi"), stream=True)
            assert isinstance(stream, anthropic.Stream)
            kinds, response_id = [], ""
            for event in stream:
                assert ours_unfinished(capsession)
                kinds.append(event.type)
                if event.type == "message_start":
                    response_id = event.message.id
        assert kinds == [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ]
        ours = assert_structure(capsession, "handle claim")
        found, _ = without_ttfc(ours)
        assert found == {
            **request_attributes(current.id, stream=True),
            **response_attributes(response_id),
            semconv.GEN_AI_INPUT_MESSAGES: json.dumps(
                [{"role": "user", "parts": [{"type": "text", "content": "Hi"}]}], separators=(",", ":")
            ),
            semconv.GEN_AI_OUTPUT_MESSAGES: json.dumps([STREAMED], separators=(",", ":")),
        }

    def test_async_stream(self, async_client: anthropic.AsyncAnthropic, capsession: CapturedSpans) -> None:
        async def main() -> tuple[str, str]:
            async with session() as current:
                with tracer.start_as_current_span("handle claim"):
                    stream = await async_client.messages.create(
                        model=MODEL, max_tokens=64, messages=user("Hi"), stream=True
                    )
                    response_id = ""
                    async for event in stream:
                        assert ours_unfinished(capsession)
                        if event.type == "message_start":
                            response_id = event.message.id
                await async_client.close()
            return current.id, response_id

        sid, response_id = asyncio.run(main())
        ours = assert_structure(capsession, "handle claim")
        found, _ = without_ttfc(ours)
        assert found == {**request_attributes(sid, stream=True), **response_attributes(response_id)}

    def test_async_stream_abandoned(self, async_client: anthropic.AsyncAnthropic, capsession: CapturedSpans) -> None:
        async def main() -> None:
            stream = await async_client.messages.create(model=MODEL, max_tokens=64, messages=user("Hi"), stream=True)
            async for _event in stream:
                break
            await stream.close()
            assert len(ai_spans(capsession)) == 1
            async with await async_client.messages.create(
                model=MODEL, max_tokens=64, messages=user("Hi"), stream=True
            ) as stream:
                assert (await stream.__anext__()).type == "message_start"
            assert len(ai_spans(capsession)) == 2
            await async_client.close()

        asyncio.run(main())
        for span in ai_spans(capsession):
            assert semconv.GEN_AI_RESPONSE_FINISH_REASONS not in attributes(span)
            assert attributes(span)[semconv.GEN_AI_USAGE_INPUT_TOKENS] == INPUT_TOKENS

    def test_streamed_tool_use(self, client: anthropic.Anthropic, capsession: CapturedSpans, capture_on: None) -> None:
        stream = client.messages.create(
            model=MODEL, max_tokens=64, tools=[TOOL_SCHEMA], messages=user("TOOL"), stream=True
        )
        with stream:
            events = list(stream)
        response_id = events[0].message.id  # type: ignore[union-attr]
        found, _ = without_ttfc(the_ai_span(capsession))
        assert {k: v for k, v in found.items() if k.startswith("gen_ai.response") or k.startswith("gen_ai.usage")} == (
            response_attributes(response_id, finish="tool_use")
        )
        assert json.loads(found[semconv.GEN_AI_OUTPUT_MESSAGES]) == [
            {
                "role": "assistant",
                "parts": [
                    {"type": "text", "content": TOOL_TEXT},
                    {"type": "tool_call", "id": TOOL_ID, "name": TOOL_NAME, "arguments": TOOL_INPUT},
                ],
                "finish_reason": "tool_use",
            }
        ]

    def test_next_and_close_behave_like_the_stream(
        self, client: anthropic.Anthropic, capsession: CapturedSpans
    ) -> None:
        stream = client.messages.create(model=MODEL, max_tokens=64, messages=user("Hi"), stream=True)
        assert stream.response.status_code == 200  # attributes pass through
        assert next(stream).type == "message_start"
        assert ours_unfinished(capsession)
        stream.close()
        assert stream.response.is_closed
        found, _ = without_ttfc(the_ai_span(capsession))
        # ended with what was seen: the start of the message, no stop reason yet
        assert found[semconv.GEN_AI_RESPONSE_MODEL] == ANSWERED_BY
        assert found[semconv.GEN_AI_USAGE_INPUT_TOKENS] == INPUT_TOKENS
        assert found[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] == 1
        assert semconv.GEN_AI_RESPONSE_FINISH_REASONS not in found

    @pytest.mark.parametrize("how", ["close", "garbage collected"])
    def test_abandoned_by_break(self, client: anthropic.Anthropic, capsession: CapturedSpans, how: str) -> None:
        stream = client.messages.create(model=MODEL, max_tokens=64, messages=user("Hi"), stream=True)
        for _event in stream:
            break
        assert ours_unfinished(capsession)  # like the SDK's stream, a later loop may go on reading it
        if how == "close":
            stream.close()
            stream.close()
        else:
            del stream
            gc.collect()
        assert len(ai_spans(capsession)) == 1  # ended, once
        assert semconv.GEN_AI_RESPONSE_FINISH_REASONS not in attributes(the_ai_span(capsession))

    def test_abandoned_by_leaving_with(self, client: anthropic.Anthropic, capsession: CapturedSpans) -> None:
        with client.messages.create(model=MODEL, max_tokens=64, messages=user("Hi"), stream=True) as stream:
            first = next(iter(stream))
            assert first.type == "message_start"
            assert isinstance(stream, anthropic.Stream)
        assert stream.response.is_closed
        (span,) = ai_spans(capsession)
        assert span.status.status_code is StatusCode.UNSET

    def test_abandoned_to_the_garbage_collector(self, client: anthropic.Anthropic, capsession: CapturedSpans) -> None:
        stream = client.messages.create(model=MODEL, max_tokens=64, messages=user("Hi"), stream=True)
        assert ours_unfinished(capsession)
        del stream
        gc.collect()
        span = the_ai_span(capsession)
        assert semconv.GEN_AI_TIME_TO_FIRST_CHUNK not in (span.attributes or {})  # nothing was read

    def test_error_event_mid_stream(self, client: anthropic.Anthropic, capsession: CapturedSpans) -> None:
        stream = client.messages.create(model=MODEL, max_tokens=64, messages=user("FAIL MIDSTREAM"), stream=True)
        with pytest.raises(anthropic.APIStatusError) as raised:
            for _event in stream:
                pass
        assert raised.value.status_code == 200
        span = the_ai_span(capsession)
        assert (span.attributes or {})[semconv.ERROR_TYPE] == "overloaded_error"
        assert span.status.status_code is StatusCode.ERROR
        assert [event.name for event in span.events] == ["exception"]

    @pytest.mark.usefixtures("capture_on")
    def test_stream_helper(self, client: anthropic.Anthropic, capsession: CapturedSpans) -> None:
        with (
            session() as current,
            tracer.start_as_current_span("handle claim"),
            client.messages.stream(model=MODEL, max_tokens=64, messages=user("Hi")) as stream,
        ):
            assert "".join(stream.text_stream) == ANSWER
            message = stream.get_final_message()
        ours = assert_structure(capsession, "handle claim")
        found, _ = without_ttfc(ours)
        assert found[semconv.SESSION_ID] == current.id
        assert {k: v for k, v in found.items() if k.startswith("gen_ai.response") or k.startswith("gen_ai.usage")} == (
            response_attributes(message.id)
        )
        assert json.loads(found[semconv.GEN_AI_OUTPUT_MESSAGES]) == [STREAMED]

    def test_stream_helper_left_early(self, client: anthropic.Anthropic, capsession: CapturedSpans) -> None:
        with client.messages.stream(model=MODEL, max_tokens=64, messages=user("Hi")) as stream:
            next(iter(stream))
            assert ours_unfinished(capsession)
        assert semconv.GEN_AI_RESPONSE_FINISH_REASONS not in attributes(the_ai_span(capsession))

    def test_async_stream_helper(self, async_client: anthropic.AsyncAnthropic, capsession: CapturedSpans) -> None:
        async def main() -> str:
            async with async_client.messages.stream(model=MODEL, max_tokens=64, messages=user("Hi")) as stream:
                message = await stream.get_final_message()
            await async_client.close()
            return message.id

        response_id = asyncio.run(main())
        found, _ = without_ttfc(the_ai_span(capsession))
        assert found[semconv.GEN_AI_RESPONSE_ID] == response_id
        assert found[semconv.GEN_AI_RESPONSE_FINISH_REASONS] == ["end_turn"]
        assert found[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] == OUTPUT_TOKENS


# --- errors ---------------------------------------------------------------------------------------------
@pytest.mark.usefixtures("instrumented")
class TestErrors:
    """A failed call marks its span ERROR with ``error.type`` (the HTTP status, or the exception's
    class) and the exception reaches the caller unchanged."""

    @pytest.mark.parametrize(
        ("prompt", "status", "error_class"),
        [("FAIL 500", 500, anthropic.InternalServerError), ("FAIL 529 overloaded", 529, anthropic.APIStatusError)],
    )
    def test_status_errors(
        self,
        client: anthropic.Anthropic,
        capsession: CapturedSpans,
        prompt: str,
        status: int,
        error_class: type[anthropic.APIStatusError],
    ) -> None:
        with session() as current, pytest.raises(error_class) as raised:
            client.messages.create(model=MODEL, max_tokens=64, messages=user(prompt))
        assert raised.value.status_code == status
        span = the_ai_span(capsession)
        assert attributes(span) == {**request_attributes(current.id), semconv.ERROR_TYPE: str(status)}
        assert span.status.status_code is StatusCode.ERROR
        (event,) = span.events
        assert event.name == "exception"
        assert str((event.attributes or {})["exception.type"]).endswith(type(raised.value).__name__)

    def test_streaming_request_refused(self, client: anthropic.Anthropic, capsession: CapturedSpans) -> None:
        with pytest.raises(anthropic.APIStatusError):
            client.messages.create(model=MODEL, max_tokens=64, messages=user("FAIL 529"), stream=True)
        assert (the_ai_span(capsession).attributes or {})[semconv.ERROR_TYPE] == "529"

    def test_timeout(self, fake: FakeAnthropic, capsession: CapturedSpans) -> None:
        with (
            anthropic.Anthropic(base_url=fake.base_url, api_key="test", max_retries=0, timeout=0.3) as slow_client,
            pytest.raises(anthropic.APITimeoutError),
        ):
            slow_client.messages.create(model=MODEL, max_tokens=64, messages=user("SLOW"))
        span = the_ai_span(capsession)
        assert (span.attributes or {})[semconv.ERROR_TYPE] == "APITimeoutError"
        assert span.status.status_code is StatusCode.ERROR

    def test_async_error(self, async_client: anthropic.AsyncAnthropic, capsession: CapturedSpans) -> None:
        async def main() -> None:
            try:
                await async_client.messages.create(model=MODEL, max_tokens=64, messages=user("FAIL 500"))
            finally:
                await async_client.close()

        with pytest.raises(anthropic.InternalServerError):
            asyncio.run(main())
        assert (the_ai_span(capsession).attributes or {})[semconv.ERROR_TYPE] == "500"


# --- the instrumentor -------------------------------------------------------------------------------------
class TestInstrumentor:
    """instrument() / uninstrument() can be undone, and an SDK we do not know is left alone."""

    def test_uninstrument_restores_the_originals(self, client: anthropic.Anthropic, capsession: CapturedSpans) -> None:
        AnthropicInstrumentor().instrument()
        assert all(getattr(owner, name) is not original for (owner, name), original in ORIGINALS.items())
        AnthropicInstrumentor().uninstrument()
        assert all(getattr(owner, name) is original for (owner, name), original in ORIGINALS.items())
        client.messages.create(model=MODEL, max_tokens=64, messages=user("Hi"))
        assert ai_spans(capsession) == []

    def test_spans_go_to_the_tracer_provider_it_was_given(
        self, client: anthropic.Anthropic, capsession: CapturedSpans
    ) -> None:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        exporter = InMemorySpanExporter()
        own = TracerProvider()
        own.add_span_processor(SimpleSpanProcessor(exporter))
        AnthropicInstrumentor().instrument(tracer_provider=own)
        try:
            client.messages.create(model=MODEL, max_tokens=64, messages=user("Hi"))
            with client.messages.stream(model=MODEL, max_tokens=64, messages=user("Hi")) as stream:
                stream.until_done()
        finally:
            AnthropicInstrumentor().uninstrument()
        assert [(span.name, span.instrumentation_scope.name) for span in exporter.get_finished_spans()] == [
            (f"chat {MODEL}", "sessiontrace.ai")
        ] * 2
        assert ai_spans(capsession) == []
        with pytest.raises(TypeError, match="tracer_provider must be an OpenTelemetry TracerProvider, got int"):
            AnthropicInstrumentor().instrument(tracer_provider=7)
        assert all(getattr(owner, name) is original for (owner, name), original in ORIGINALS.items())

    def test_suppressed_instrumentation_makes_no_span(
        self, client: anthropic.Anthropic, capsession: CapturedSpans
    ) -> None:
        from opentelemetry.instrumentation.utils import suppress_instrumentation

        AnthropicInstrumentor().instrument()
        try:
            with suppress_instrumentation():
                message = client.messages.create(model=MODEL, max_tokens=64, messages=user("Hi"))
                with client.messages.stream(model=MODEL, max_tokens=64, messages=user("Hi")) as stream:
                    stream.until_done()
            assert message.content
            assert ai_spans(capsession) == []
            client.messages.create(model=MODEL, max_tokens=64, messages=user("Hi"))  # and traced again after
        finally:
            AnthropicInstrumentor().uninstrument()
        assert len(ai_spans(capsession)) == 1

    def test_missing_method_is_reported_once_and_skipped(
        self,
        client: anthropic.Anthropic,
        capsession: CapturedSpans,
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        reset_warnings()
        monkeypatch.delattr(Messages, "stream")  # an SDK without the helper
        with caplog.at_level(logging.WARNING, logger="sessiontrace"):
            AnthropicInstrumentor().instrument()
            try:
                client.messages.create(model=MODEL, max_tokens=64, messages=user("Hi"))
            finally:
                AnthropicInstrumentor().uninstrument()
            AnthropicInstrumentor().instrument()
            AnthropicInstrumentor().uninstrument()
        assert [r.getMessage() for r in caplog.records] == [
            "sessiontrace: this anthropic SDK has no Messages.stream; calls through it are not traced"
        ]
        assert len(ai_spans(capsession)) == 1
        assert Messages.create is ORIGINALS[(Messages, "create")]


# --- the session on the wire ------------------------------------------------------------------------------
@pytest.mark.usefixtures("instrumented")
class TestOutboundPolicy:
    """The SDK injects the trace context, baggage included, through its own HTTP client: the outbound
    host policy still decides whether the session goes to the provider."""

    def test_allowed_host_receives_the_session(self, client: anthropic.Anthropic, fake: FakeAnthropic) -> None:
        with session() as current:
            client.messages.create(model=MODEL, max_tokens=64, messages=user("Hi"))
        assert f"{semconv.BAGGAGE_SESSION_ID}={current.id}" in fake.requests[-1].headers.get("baggage", "")

    def test_other_host_does_not(self, client: anthropic.Anthropic, fake: FakeAnthropic, reconfigure: Any) -> None:
        reconfigure(outbound=OutboundPolicy(("api.example.org",)))
        with session(user_id="alice") as current, tracer.start_as_current_span("handle claim") as app:
            client.messages.create(model=MODEL, max_tokens=64, messages=user("Hi"))
        headers = fake.requests[-1].headers
        assert current.id not in headers.get("baggage", "")
        assert "alice" not in headers.get("baggage", "")
        assert format(app.get_span_context().trace_id, "032x") in headers["traceparent"]  # the trace still joins


# --- the SDK's own span ------------------------------------------------------------------------------------
@pytest.mark.usefixtures("instrumented")
class TestSdkSpan:
    """The SDK's own span carries token usage too (the README's warning about summing tokens over
    every span), and the two ways the README gives to turn it off leave ours alone."""

    def test_both_spans_carry_the_usage(self, client: anthropic.Anthropic, capsession: CapturedSpans) -> None:
        with session():
            client.messages.create(model=MODEL, max_tokens=64, messages=user("Hi"))
        (sdk,) = sdk_spans(capsession)
        ours = the_ai_span(capsession)
        usage = (semconv.GEN_AI_USAGE_INPUT_TOKENS, semconv.GEN_AI_USAGE_OUTPUT_TOKENS)
        assert [(sdk.attributes or {})[key] for key in usage] == [(ours.attributes or {})[key] for key in usage]

    def test_environment_variable_turns_it_off(
        self, fake: FakeAnthropic, capsession: CapturedSpans, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("ANTHROPIC_OPEN_TELEMETRY", "false")
        with anthropic.Anthropic(base_url=fake.base_url, api_key="test", max_retries=0) as sdk, session():
            sdk.messages.create(model=MODEL, max_tokens=64, messages=user("Hi"))
        assert sdk_spans(capsession) == []
        assert (the_ai_span(capsession).attributes or {})[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] > 0

    def test_client_option_turns_it_off(self, fake: FakeAnthropic, capsession: CapturedSpans) -> None:
        with (
            anthropic.Anthropic(
                base_url=fake.base_url, api_key="test", max_retries=0, open_telemetry={"traces": False}
            ) as sdk,
            session(),
        ):
            sdk.messages.create(model=MODEL, max_tokens=64, messages=user("Hi"))
        assert sdk_spans(capsession) == []
        assert (the_ai_span(capsession).attributes or {})[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] > 0
