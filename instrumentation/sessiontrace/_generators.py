"""Decorating a generator function so that an activity (a session, a workflow step) spans it.

Calling a generator function only creates the generator: an activity opened around the call would
end before the body runs. These wrappers open it when the generator is first iterated and end it
when the generator finishes, fails or is closed. Its context is attached only while the body runs,
so nothing of it leaks into the consumer between items, and the body resumes in the context it
left at its last ``yield`` (a span or step it keeps open across one stays current).

The wrappers are themselves generator (or async generator) functions, so ``inspect`` and the
frameworks that rely on it (dependencies with ``yield``, streaming responses) see what they saw.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry.context import Context

Finish = Callable[[BaseException | None, bool], None]
"""Ends the activity: ``finish(error, closed_early)``, called once; ``error`` is None when the
generator was exhausted or closed early by its consumer."""

Open = Callable[[], tuple[Context, Finish]]
"""Opens the activity when the generator is first iterated: its context, and how to end it."""


def generator_in_context(
    func: Callable[..., Generator[Any, Any, Any]], open_activity: Open
) -> Callable[..., Generator[Any, Any, Any]]:
    """``func`` with each of its generators run inside an activity ``open_activity`` opens."""

    @functools.wraps(func)
    def run(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
        body, finish = open_activity()  # then whatever the body left attached
        generator = func(*args, **kwargs)
        resume: Callable[[Any], Any] = generator.send
        value: Any = None
        while True:
            token = otel_context.attach(body)
            try:
                item = resume(value)
            except StopIteration as stop:
                finish(None, False)
                return stop.value
            except BaseException as error:
                finish(error, False)
                raise
            finally:
                body = otel_context.get_current()
                otel_context.detach(token)
            try:
                value = yield item
                resume = generator.send
            except GeneratorExit:  # the consumer stopped early (close() or garbage collection)
                token = otel_context.attach(body)
                try:
                    generator.close()
                except BaseException as error:
                    finish(error, False)
                    raise
                finally:
                    otel_context.detach(token)
                finish(None, True)
                raise
            except BaseException as error:  # thrown in by the consumer: hand it to the generator
                resume, value = generator.throw, error

    return run


def async_generator_in_context(
    func: Callable[..., AsyncGenerator[Any, Any]], open_activity: Open
) -> Callable[..., AsyncGenerator[Any, Any]]:
    """As ``generator_in_context``, for async generator functions."""

    @functools.wraps(func)
    async def run(*args: Any, **kwargs: Any) -> AsyncGenerator[Any, Any]:
        body, finish = open_activity()
        generator = func(*args, **kwargs)
        resume: Callable[[Any], Awaitable[Any]] = generator.asend
        value: Any = None
        while True:
            token = otel_context.attach(body)
            try:
                item = await resume(value)
            except StopAsyncIteration:
                finish(None, False)
                return
            except BaseException as error:
                finish(error, False)
                raise
            finally:
                body = otel_context.get_current()
                otel_context.detach(token)
            try:
                value = yield item
                resume = generator.asend
            except GeneratorExit:
                token = otel_context.attach(body)
                try:
                    await generator.aclose()
                except BaseException as error:
                    finish(error, False)
                    raise
                finally:
                    otel_context.detach(token)
                finish(None, True)
                raise
            except BaseException as error:
                resume, value = generator.athrow, error

    return run
