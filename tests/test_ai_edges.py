"""Edges of the AI instrumentors, with the real ``openai`` and ``anthropic`` SDKs against the fake
servers on loopback: streams that fail without an exception, stream helpers left early, streams
read in more than one loop, the structured-output and beta entry points, content that is too long
or too odd to encode, and the GenAI semantic-convention attributes taken from the client."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pydantic
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import StatusCode

import _fake_anthropic as fake_api
import _fake_openai as fake_wire
from _fake_anthropic import ANSWER, CACHE_READ_TOKENS, CACHE_WRITE_TOKENS, INPUT_TOKENS, OUTPUT_TOKENS, FakeAnthropic
from _fake_openai import FakeOpenAI
from sessiontrace import semconv
from sessiontrace._log import reset_warnings
from sessiontrace.ai import ai_call, call, content
from sessiontrace.ai.anthropic import AnthropicInstrumentor
from sessiontrace.ai.openai import OpenAIInstrumentor
from sessiontrace.testing import CapturedSpans

MODEL = "gpt-4o-mini"
CLAUDE = "claude-sonnet-4-6"
HELLO: Any = [{"role": "user", "content": "Say hello"}]  # Any: each SDK has its own message type


class Answer(pydantic.BaseModel):
    answer: str


# --- fixtures ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def openai_server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as running:
        yield running


@pytest.fixture(scope="module")
def anthropic_server() -> Iterator[FakeAnthropic]:
    server = fake_api.start()
    try:
        yield server
    finally:
        fake_api.stop(server)


@pytest.fixture
def spans(capsession: CapturedSpans) -> Iterator[CapturedSpans]:
    """Both SDKs instrumented, content capture off unless a test turns it on."""
    content.set_capture_content(False)
    OpenAIInstrumentor().instrument()
    AnthropicInstrumentor().instrument()
    try:
        yield capsession
    finally:
        OpenAIInstrumentor().uninstrument()
        AnthropicInstrumentor().uninstrument()
        content.set_capture_content(None)


@pytest.fixture
def oai(openai_server: FakeOpenAI) -> Iterator[Any]:
    with openai.OpenAI(base_url=openai_server.base_url, api_key="test", max_retries=0) as sdk:
        yield sdk


@pytest.fixture
def claude(anthropic_server: FakeAnthropic) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=anthropic_server.base_url, api_key="test", max_retries=0) as sdk:
        yield sdk


@pytest.fixture
def no_gc() -> Iterator[None]:
    """No cyclic garbage collection: a span must end when its stream is closed, not when a cycle
    holding it happens to be collected."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def the_span(spans: CapturedSpans, model: str = MODEL) -> ReadableSpan:
    found = spans.named(f"chat {model}")
    assert len(found) == 1, [span.name for span in spans.spans]
    return found[0]


def attributes(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


# --- 1. Responses API streams that fail without an exception ------------------------------------------------
class TestResponsesFailure:
    """A Responses stream ending with ``response.failed`` or an ``error`` event raises nothing in
    the SDK: the span is an error all the same, ``error.type`` the provider's error code."""

    @pytest.mark.parametrize("prompt", ["FAILED RESPONSE", "ERROR EVENT"])
    def test_stream(self, spans: CapturedSpans, oai: Any, prompt: str) -> None:
        events = [event.type for event in oai.responses.create(model=MODEL, input=prompt, stream=True)]
        assert events[-1] in ("response.failed", "error")  # the app saw the failure, no exception
        span = the_span(spans)
        assert span.status.status_code is StatusCode.ERROR
        assert span.status.description == fake_wire.FAILED_MESSAGE
        assert attributes(span)[semconv.ERROR_TYPE] == fake_wire.FAILED_CODE

    def test_async_stream(self, spans: CapturedSpans, openai_server: FakeOpenAI) -> None:
        async def main() -> None:
            async with openai.AsyncOpenAI(base_url=openai_server.base_url, api_key="t", max_retries=0) as sdk:
                async for _ in await sdk.responses.create(model=MODEL, input="ERROR EVENT", stream=True):
                    pass

        asyncio.run(main())
        span = the_span(spans)
        assert (span.status.status_code, attributes(span)[semconv.ERROR_TYPE]) == (
            StatusCode.ERROR,
            fake_wire.FAILED_CODE,
        )

    def test_failed_response_not_streamed(self, spans: CapturedSpans, oai: Any) -> None:
        assert oai.responses.create(model=MODEL, input="FAILED RESPONSE").status == "failed"
        span = the_span(spans)
        assert span.status.status_code is StatusCode.ERROR
        assert attributes(span)[semconv.ERROR_TYPE] == fake_wire.FAILED_CODE

    def test_completed_stream_is_no_error(self, spans: CapturedSpans, oai: Any) -> None:
        list(oai.responses.create(model=MODEL, input="Say hello", stream=True))
        span = the_span(spans)
        assert span.status.status_code is StatusCode.UNSET
        assert semconv.ERROR_TYPE not in attributes(span)


# --- 2. OpenAI stream helpers left early ---------------------------------------------------------------------
@pytest.mark.usefixtures("no_gc")
class TestOpenAIStreamHelpers:
    """``chat.completions.stream()`` and ``responses.stream()`` close only the HTTP response, and the
    helper is a reference cycle: leaving its ``with`` (or closing it) must end the span at once."""

    @staticmethod
    def helpers(sdk: Any) -> dict[str, Any]:
        return {
            "chat": lambda: sdk.chat.completions.stream(model=MODEL, messages=HELLO),
            "responses": lambda: sdk.responses.stream(model=MODEL, input="Say hello"),
        }

    @pytest.mark.parametrize("helper", ["chat", "responses"])
    def test_sync_with_left_early(self, spans: CapturedSpans, oai: Any, helper: str) -> None:
        with self.helpers(oai)[helper]() as stream:
            for _ in stream:
                break
            assert not spans.named(f"chat {MODEL}")
        span = the_span(spans)
        assert semconv.GEN_AI_RESPONSE_FINISH_REASONS not in attributes(span)  # what was seen, no more

    @pytest.mark.parametrize("helper", ["chat", "responses"])
    def test_sync_closed(self, spans: CapturedSpans, oai: Any, helper: str) -> None:
        stream = self.helpers(oai)[helper]().__enter__()
        next(iter(stream))
        stream.close()
        stream.close()
        assert len(spans.named(f"chat {MODEL}")) == 1

    @pytest.mark.parametrize("helper", ["chat", "responses"])
    def test_async_with_left_early(self, spans: CapturedSpans, openai_server: FakeOpenAI, helper: str) -> None:
        async def main() -> int:
            async with openai.AsyncOpenAI(base_url=openai_server.base_url, api_key="t", max_retries=0) as sdk:
                async with self.helpers(sdk)[helper]() as stream:
                    async for _ in stream:
                        break
                return len(spans.named(f"chat {MODEL}"))

        assert asyncio.run(main()) == 1

    def test_read_to_the_end_still_records_everything(self, spans: CapturedSpans, oai: Any) -> None:
        with oai.chat.completions.stream(model=MODEL, messages=HELLO) as stream:
            stream.until_done()
        assert attributes(the_span(spans))[semconv.GEN_AI_RESPONSE_FINISH_REASONS] == ("stop",)


# --- 3. Anthropic streams read in more than one loop ---------------------------------------------------------
class TestAnthropicResumableStream:
    """The SDK's stream is its own iterator: a peek and a loop read one answer. Ours too, so the
    span ends at the real end with the whole answer, not after the peek."""

    def test_peek_then_loop(self, spans: CapturedSpans, claude: anthropic.Anthropic) -> None:
        stream = claude.messages.create(model=CLAUDE, max_tokens=64, messages=HELLO, stream=True)
        assert next(iter(stream)).type == "message_start"
        assert not spans.named(f"chat {CLAUDE}")
        rest = [event.type for event in stream]
        assert rest[-1] == "message_stop"
        found = attributes(the_span(spans, CLAUDE))
        assert found[semconv.GEN_AI_RESPONSE_FINISH_REASONS] == ("end_turn",)
        assert found[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] == OUTPUT_TOKENS
        assert iter(stream) is stream

    def test_two_loops(self, spans: CapturedSpans, claude: anthropic.Anthropic) -> None:
        stream = claude.messages.create(model=CLAUDE, max_tokens=64, messages=HELLO, stream=True)
        for _ in stream:
            break
        for _ in stream:
            pass
        found = attributes(the_span(spans, CLAUDE))
        assert found[semconv.GEN_AI_RESPONSE_FINISH_REASONS] == ("end_turn",)

    def test_async_peek_then_loop(self, spans: CapturedSpans, anthropic_server: FakeAnthropic) -> None:
        async def main() -> None:
            sdk = anthropic.AsyncAnthropic(base_url=anthropic_server.base_url, api_key="t", max_retries=0)
            stream = await sdk.messages.create(model=CLAUDE, max_tokens=64, messages=HELLO, stream=True)
            assert (await stream.__aiter__().__anext__()).type == "message_start"
            await asyncio.sleep(0.01)  # the loop finalizes dropped async generators in the meantime
            assert not spans.named(f"chat {CLAUDE}")
            async for _ in stream:
                pass
            assert stream.__aiter__() is stream
            await sdk.close()

        asyncio.run(main())
        assert attributes(the_span(spans, CLAUDE))[semconv.GEN_AI_RESPONSE_FINISH_REASONS] == ("end_turn",)


# --- 4. structured outputs and the beta resource -------------------------------------------------------------
class TestMoreEntryPoints:
    """``responses.parse()``, Anthropic ``messages.parse()`` and ``beta.messages`` post without going
    through ``create``: each is traced too, once."""

    def test_openai_responses_parse(self, spans: CapturedSpans, oai: Any) -> None:
        parsed = oai.responses.parse(model=MODEL, input="Say hello", text_format=Answer)
        assert parsed.output_parsed == Answer(answer="Hello from the fake model.")
        found = attributes(the_span(spans))
        assert found[semconv.GEN_AI_RESPONSE_ID] == fake_wire.RESPONSES_ID
        assert found[semconv.GEN_AI_OUTPUT_TYPE] == "json"

    def test_openai_responses_parse_async(self, spans: CapturedSpans, openai_server: FakeOpenAI) -> None:
        async def main() -> None:
            async with openai.AsyncOpenAI(base_url=openai_server.base_url, api_key="t", max_retries=0) as sdk:
                await sdk.responses.parse(model=MODEL, input="Say hello")

        asyncio.run(main())
        assert attributes(the_span(spans))[semconv.GEN_AI_USAGE_INPUT_TOKENS] == fake_wire.PROMPT_TOKENS

    def test_anthropic_messages_parse(self, spans: CapturedSpans, claude: anthropic.Anthropic) -> None:
        message = claude.messages.parse(model=CLAUDE, max_tokens=64, messages=HELLO, output_format=Answer)
        assert message.parsed_output == Answer(answer=ANSWER)
        found = attributes(the_span(spans, CLAUDE))
        assert found[semconv.GEN_AI_RESPONSE_ID] == message.id
        assert found[semconv.GEN_AI_OUTPUT_TYPE] == "json"

    def test_anthropic_messages_parse_async(self, spans: CapturedSpans, anthropic_server: FakeAnthropic) -> None:
        async def main() -> None:
            sdk = anthropic.AsyncAnthropic(base_url=anthropic_server.base_url, api_key="t", max_retries=0)
            await sdk.messages.parse(model=CLAUDE, max_tokens=64, messages=HELLO)
            await sdk.close()

        asyncio.run(main())
        assert attributes(the_span(spans, CLAUDE))[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] == OUTPUT_TOKENS

    def test_anthropic_beta_messages(self, spans: CapturedSpans, claude: anthropic.Anthropic) -> None:
        message = claude.beta.messages.create(model=CLAUDE, max_tokens=64, messages=HELLO)
        assert attributes(the_span(spans, CLAUDE))[semconv.GEN_AI_RESPONSE_ID] == message.id
        spans.clear()
        events = list(claude.beta.messages.create(model=CLAUDE, max_tokens=64, messages=HELLO, stream=True))
        assert attributes(the_span(spans, CLAUDE))[semconv.GEN_AI_RESPONSE_FINISH_REASONS] == ("end_turn",)
        assert events[-1].type == "message_stop"
        spans.clear()
        with claude.beta.messages.stream(model=CLAUDE, max_tokens=64, messages=HELLO) as stream:
            assert stream.get_final_message().content[0].text == ANSWER
        assert attributes(the_span(spans, CLAUDE))[semconv.GEN_AI_REQUEST_STREAM] is True
        spans.clear()
        parsed = claude.beta.messages.parse(model=CLAUDE, max_tokens=64, messages=HELLO, output_format=Answer)
        assert parsed.parsed_output == Answer(answer=ANSWER)
        assert attributes(the_span(spans, CLAUDE))[semconv.GEN_AI_OUTPUT_TYPE] == "json"

    def test_missing_optional_methods_are_skipped_quietly(
        self, capsession: CapturedSpans, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Another SDK version without them: nothing to warn about, the rest is traced."""
        from anthropic.resources.beta.messages import Messages as BetaMessages
        from anthropic.resources.messages import Messages
        from openai.lib.streaming.chat._completions import ChatCompletionStream
        from openai.resources.responses import Responses

        for owner, method in ((Responses, "parse"), (ChatCompletionStream, "close"), (Messages, "parse")):
            monkeypatch.delattr(owner, method)
        monkeypatch.delattr(BetaMessages, "create")
        reset_warnings()
        with caplog.at_level(logging.WARNING, logger="sessiontrace"):
            OpenAIInstrumentor().instrument()
            AnthropicInstrumentor().instrument()
            OpenAIInstrumentor().uninstrument()
            AnthropicInstrumentor().uninstrument()
        assert caplog.records == []

    def test_uninstrument_restores_the_new_targets(self, capsession: CapturedSpans) -> None:
        from anthropic.resources.beta.messages import Messages as BetaMessages
        from anthropic.resources.messages import Messages
        from openai.lib.streaming.responses._responses import ResponseStream
        from openai.resources.responses import Responses

        targets = ((Responses, "parse"), (ResponseStream, "close"), (Messages, "parse"), (BetaMessages, "create"))
        originals = [owner.__dict__[method] for owner, method in targets]
        OpenAIInstrumentor().instrument()
        AnthropicInstrumentor().instrument()
        wrapped = [owner.__dict__[method] for owner, method in targets]
        assert not any(now is before for now, before in zip(wrapped, originals, strict=True))
        OpenAIInstrumentor().uninstrument()
        AnthropicInstrumentor().uninstrument()
        restored = [owner.__dict__[method] for owner, method in targets]
        assert all(now is before for now, before in zip(restored, originals, strict=True))


# --- 8. content cut to size, still JSON ------------------------------------------------------------------------
class TestCappedContent:
    """Captured content over ``MAX_CONTENT_CHARS`` stays valid JSON in the semconv message shape:
    the longest strings are cut inside their parts (the marker in the text), and only when even that
    is not enough do trailing messages go, a text part saying how many."""

    LIMIT = content.MAX_CONTENT_CHARS

    def decoded(self, value: Any) -> Any:
        text = content.messages_json(value)
        assert len(text) <= self.LIMIT
        return json.loads(text)

    def test_one_long_text_is_cut_inside_its_part(self) -> None:
        question = "What does the policy cover?"
        (message,) = self.decoded(
            [
                {
                    "role": "user",
                    "parts": [{"type": "text", "content": "x" * 100_000}, {"type": "text", "content": question}],
                }
            ]
        )
        long, short = message["parts"]
        kept, _, marker = long["content"].partition("…")
        assert (message["role"], long["type"], set(kept)) == ("user", "text", {"x"})
        assert marker == f"[truncated {100_000 - len(kept)} chars]"
        assert short == {"type": "text", "content": question}  # short strings stay whole

    def test_quotes_and_newlines_are_counted_as_encoded(self) -> None:
        (message,) = self.decoded([content.text_message("user", '"\n' * 20_000)])
        assert message["parts"][0]["content"].endswith("chars]")

    def test_system_instructions_shape(self) -> None:
        parts = self.decoded([{"type": "text", "content": "a" * 30_000}, {"type": "text", "content": "b" * 30_000}])
        assert [part["type"] for part in parts] == ["text", "text"]
        assert all(part["content"].endswith("chars]") for part in parts)

    def test_a_very_long_conversation_drops_trailing_messages(self) -> None:
        conversation = [content.text_message("user" if i % 2 else "assistant", "y" * 500) for i in range(1_000)]
        decoded = self.decoded(conversation)
        assert 1 < len(decoded) < 1_000
        assert all(set(message) == {"role", "parts"} for message in decoded)
        last = decoded[-1]["parts"][-1]
        assert last == {"type": "text", "content": f"…[truncated {1_000 - len(decoded)} messages]"}
        assert decoded[0]["parts"][0]["content"].startswith("y" * 256)

    def test_one_message_with_very_many_parts_keeps_its_first_parts(self) -> None:
        (message,) = self.decoded([{"role": "user", "parts": [{"type": "text", "content": "z"}] * 5_000}])
        assert message["parts"][0] == {"type": "text", "content": "z"}
        assert message["parts"][-1]["content"].startswith("…[truncated ")

    def test_a_long_value_under_a_shape_key_is_content_and_cut(self) -> None:
        call = {"type": "tool_call", "name": "classify", "arguments": {"type": "t" * 50_000}}
        (message,) = self.decoded([{"role": "assistant", "parts": [call]}])
        (part,) = message["parts"]
        assert (part["type"], part["name"]) == ("tool_call", "classify")
        assert part["arguments"]["type"].endswith("chars]")

    def test_on_the_span(self, spans: CapturedSpans) -> None:
        content.set_capture_content(True)
        with ai_call(model="local-nb", input_messages=[content.text_message("user", "x" * 50_000)]):
            pass
        recorded = attributes(the_span(spans, "local-nb"))[semconv.GEN_AI_INPUT_MESSAGES]
        assert json.loads(recorded)[0]["parts"][0]["content"].endswith("chars]")


# --- 9. content that cannot be encoded never reaches the application ---------------------------------------------
class Detached:
    """An ORM object whose repr reads an attribute of a closed session."""

    def __repr__(self) -> str:
        raise RuntimeError("Instance is not bound to a Session")


class BrokenModel:
    """A model whose ``model_dump`` raises, and whose repr raises too."""

    def model_dump(self, **kwargs: Any) -> Any:
        raise ValueError("cannot dump")

    def __repr__(self) -> str:
        raise KeyError("no repr")


class BrokenMapping(dict[str, Any]):
    def items(self) -> Any:
        raise RuntimeError("items")


class TestUnencodableContent:
    """``messages_json`` never raises, whatever it is given: the call goes on, with a marker."""

    @pytest.mark.parametrize("odd", [Detached(), BrokenModel()], ids=["repr raises", "model_dump and repr raise"])
    def test_part_content(self, odd: Any) -> None:
        (message,) = json.loads(content.messages_json([{"role": "user", "parts": [{"type": "x", "content": odd}]}]))
        assert message["parts"][0]["content"] == f"<{type(odd).__qualname__}: repr failed>"

    def test_whole_document(self) -> None:
        assert json.loads(content.messages_json([BrokenMapping(role="user")])) == {"unencodable": "RuntimeError: items"}

    def test_ai_call_runs_the_model(self, spans: CapturedSpans) -> None:
        content.set_capture_content(True)
        ran = False
        odd = [{"role": "user", "parts": [{"type": "x", "content": Detached()}]}]
        with ai_call(model="local-nb", input_messages=odd):
            ran = True
        assert ran
        assert "repr failed" in str(attributes(the_span(spans, "local-nb"))[semconv.GEN_AI_INPUT_MESSAGES])


# --- 7. semantic-convention attributes from the client and the request ---------------------------------------------
class TestSemconvAttributes:
    """``server.address``/``server.port`` from the client's base URL (parsed once per client),
    ``gen_ai.request.stream`` on streamed requests only, ``gen_ai.output.type`` when a format is
    asked for, ``gen_ai.conversation.id`` from a Responses conversation, ``azure.ai.openai`` for
    Azure clients, and Anthropic's ``top_k`` and prompt-cache token counts."""

    def test_server_of_each_client(
        self,
        spans: CapturedSpans,
        oai: Any,
        claude: anthropic.Anthropic,
        openai_server: FakeOpenAI,
        anthropic_server: FakeAnthropic,
    ) -> None:
        oai.chat.completions.create(model=MODEL, messages=HELLO)
        claude.messages.create(model=CLAUDE, max_tokens=64, messages=HELLO)
        for model, port in ((MODEL, openai_server.port), (CLAUDE, anthropic_server.server.server_address[1])):
            found = attributes(the_span(spans, model))
            assert (found[semconv.SERVER_ADDRESS], found[semconv.SERVER_PORT]) == ("127.0.0.1", port)

    def test_endpoint_is_parsed_once_per_url_with_default_ports(self) -> None:
        url = openai.OpenAI(api_key="test").base_url
        found = call.endpoint(url)
        assert found is call.endpoint(url)
        assert found is not None
        assert dict(found.attributes) == {semconv.SERVER_ADDRESS: "api.openai.com", semconv.SERVER_PORT: 443}
        assert call.endpoint(None) is None
        assert dict(call.endpoint("not a url").attributes) == {}

    def test_stream_flag_only_on_streamed_requests(
        self, spans: CapturedSpans, oai: Any, claude: anthropic.Anthropic
    ) -> None:
        oai.chat.completions.create(model=MODEL, messages=HELLO)
        assert semconv.GEN_AI_REQUEST_STREAM not in attributes(the_span(spans))
        spans.clear()
        list(oai.chat.completions.create(model=MODEL, messages=HELLO, stream=True))
        assert attributes(the_span(spans))[semconv.GEN_AI_REQUEST_STREAM] is True
        list(claude.messages.create(model=CLAUDE, max_tokens=64, messages=HELLO, stream=True))
        assert attributes(the_span(spans, CLAUDE))[semconv.GEN_AI_REQUEST_STREAM] is True
        spans.clear()
        with claude.messages.stream(model=CLAUDE, max_tokens=64, messages=HELLO) as stream:
            stream.until_done()
        assert attributes(the_span(spans, CLAUDE))[semconv.GEN_AI_REQUEST_STREAM] is True

    @pytest.mark.parametrize(
        ("response_format", "expected"),
        [
            ({"type": "json_object"}, "json"),
            ({"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}}, "json"),
            ({"type": "text"}, "text"),
            (None, None),
        ],
    )
    def test_openai_output_type(self, spans: CapturedSpans, oai: Any, response_format: Any, expected: Any) -> None:
        extra = {"response_format": response_format} if response_format else {}
        oai.chat.completions.create(model=MODEL, messages=HELLO, **extra)
        assert attributes(the_span(spans)).get(semconv.GEN_AI_OUTPUT_TYPE) == expected

    def test_openai_output_type_of_structured_calls(self, spans: CapturedSpans, oai: Any) -> None:
        oai.chat.completions.parse(model=MODEL, messages=HELLO, response_format=Answer)
        assert attributes(the_span(spans))[semconv.GEN_AI_OUTPUT_TYPE] == "json"
        spans.clear()
        schema = {"type": "json_schema", "name": "answer", "schema": {"type": "object"}}
        oai.responses.create(model=MODEL, input="Say hello", text={"format": schema})
        assert attributes(the_span(spans))[semconv.GEN_AI_OUTPUT_TYPE] == "json"

    @pytest.mark.parametrize("conversation", ["conv_123", {"id": "conv_123"}])
    def test_conversation_id(self, spans: CapturedSpans, oai: Any, conversation: Any) -> None:
        oai.responses.create(model=MODEL, input="Say hello", conversation=conversation)
        assert attributes(the_span(spans))[semconv.GEN_AI_CONVERSATION_ID] == "conv_123"

    def test_azure_provider(self, spans: CapturedSpans, openai_server: FakeOpenAI) -> None:
        endpoint = f"http://127.0.0.1:{openai_server.port}"
        azure = openai.AzureOpenAI(azure_endpoint=endpoint, api_version="2024-10-21", api_key="t", max_retries=0)
        with pytest.raises(openai.NotFoundError):  # the fake serves OpenAI's paths, not Azure's deployments
            azure.chat.completions.create(model="claims-deployment", messages=HELLO)
        found = attributes(the_span(spans, "claims-deployment"))
        assert found[semconv.GEN_AI_PROVIDER_NAME] == "azure.ai.openai"
        assert found[semconv.SERVER_ADDRESS] == "127.0.0.1"

    def test_anthropic_top_k_and_cache_tokens(self, spans: CapturedSpans, claude: anthropic.Anthropic) -> None:
        claude.messages.create(
            model=CLAUDE, max_tokens=64, extra_body={"top_k": 5}, messages=[{"role": "user", "content": "CACHED hi"}]
        )
        list(
            claude.messages.create(
                model="claude-streamed", max_tokens=64, stream=True, messages=[{"role": "user", "content": "CACHED"}]
            )
        )
        for model in (CLAUDE, "claude-streamed"):
            found = attributes(the_span(spans, model))
            assert found[semconv.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] == CACHE_READ_TOKENS
            assert found[semconv.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS] == CACHE_WRITE_TOKENS
            # the conventions: Anthropic's input_tokens excludes the cache; ours is the sum
            assert found[semconv.GEN_AI_USAGE_INPUT_TOKENS] == INPUT_TOKENS + CACHE_READ_TOKENS + CACHE_WRITE_TOKENS
        assert attributes(the_span(spans, CLAUDE))[semconv.GEN_AI_REQUEST_TOP_K] == 5.0

    def test_anthropic_output_config_format(self, spans: CapturedSpans, claude: anthropic.Anthropic) -> None:
        schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
        claude.messages.create(
            model=CLAUDE,
            max_tokens=64,
            messages=HELLO,
            output_config={"format": {"type": "json_schema", "schema": schema}},
        )
        assert attributes(the_span(spans, CLAUDE))[semconv.GEN_AI_OUTPUT_TYPE] == "json"
