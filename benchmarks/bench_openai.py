"""What ``OpenAIInstrumentor`` adds to a chat call, against the fake OpenAI server on loopback.

    python benchmarks/bench_openai.py [--rounds 40] [--calls 50] [--latency-ms 0]
                                      [--server subprocess|thread] [--no-gc]

The real ``openai`` client calls ``chat.completions.create`` on tests/_fake_openai.py inside a
session, with ``configure()``'s processors (stamping, redaction) and a batch exporter to memory.
The server is uvicorn in a child process by default, as a provider is another machine;
``--server thread`` runs it in a thread of this process, where its Python competes with the
client's for the GIL (and the ratio measures that interplay as much as our code).
Two modes, each uninstrumented (``plain``: the SDK method kept from before instrumenting, the
same code minus ours) and instrumented (``traced``): a plain answer, and a stream of 7 chunks
with usage read to the end. Content capture is off, its default.

A loopback round trip with no latency is the cheapest an HTTP call ever gets (~2 ms here, most
of it the SDK's own Python), so ``--latency-ms 0`` is the worst case for the ratio; the added
microseconds per call are the figure that carries over to a real provider (hundreds of ms).
The machine is assumed noisy: within a round the variants take turns call by call, in a
shuffled order, and the headline figure is the median over rounds of each round's traced/plain
ratio (wall clock; the process CPU ratio is shown beside it; with the server in a child process it
is the client's CPU).
``--no-gc`` disables the cyclic garbage collector during the timed rounds, a diagnostic: the
difference it makes is what collections triggered by our allocations cost.

Three floors are timed beside the plain answer, so the ratio can be read against what any tracing
costs: ``empty span`` wraps the plain call in one attribute-less span of a bare SDK
``TracerProvider`` (no processors at all), ``empty span, batch`` in one of an SDK provider with
only a ``BatchSpanProcessor`` (the exporting any application has), ``empty span, ours`` in one of
the configured provider (stamping, redaction, batching). Inside a 2-4 ms SDK call a span costs several times what it
costs in a tight loop (the call evicts it from the CPU caches), and on this machine the empty
span alone is already about 5%: no instrumentation that creates a span can do better.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import openai
from openai.resources.chat.completions import Completions
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from _fake_openai import FakeOpenAI
from sessiontrace.ai.openai import OpenAIInstrumentor
from sessiontrace.config import configure
from sessiontrace.context import session

TARGET = 1.05
"""Instrumented calls may cost at most 1.05x uninstrumented ones (5% overhead)."""

MESSAGES: Any = [{"role": "system", "content": "You triage claims."}, {"role": "user", "content": "Say hello"}]


@dataclass
class Variant:
    name: str
    call: Callable[[], None]
    wall: list[float] = field(default_factory=list)  # µs per call, one per round
    cpu: list[float] = field(default_factory=list)  # process CPU µs per call (client + server threads)


_SERVE = """
import sys, time
sys.path.insert(0, sys.argv[1])
from _fake_openai import FakeOpenAI
with FakeOpenAI(latency=float(sys.argv[2])) as server:
    print(server.base_url, flush=True)
    sys.stdin.read()  # until the parent closes our stdin
"""


@contextlib.contextmanager
def fake_server(where: str, latency: float) -> Any:
    """The fake OpenAI server's base URL, in a child process or in a thread of this one."""
    if where == "thread":
        with FakeOpenAI(latency=latency) as server:
            yield server.base_url
        return
    tests = str(Path(__file__).resolve().parents[1] / "tests")
    child = subprocess.Popen(
        [sys.executable, "-c", _SERVE, tests, str(latency)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "OTEL_SDK_DISABLED": "true"},
    )
    try:
        assert child.stdout is not None
        base_url = child.stdout.readline().strip()
        if not base_url:
            raise RuntimeError("the fake OpenAI server did not start")
        yield base_url
    finally:
        assert child.stdin is not None
        child.stdin.close()
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def run_round(variants: list[Variant], calls: int, order: random.Random) -> None:
    """``calls`` calls of each, one after the other in turn, so that whatever the machine does
    meanwhile falls on all alike. The order is shuffled every turn: in a fixed or mirrored one, a
    variant always follows the same others (or itself), and what they left in the CPU caches
    weighed on its time by tens of microseconds."""
    totals = {id(variant): [0, 0] for variant in variants}
    clock, cpu_clock = time.perf_counter_ns, time.process_time_ns
    gc.collect()
    turn = list(variants)
    for _ in range(calls):
        order.shuffle(turn)
        for variant in turn:
            wall, cpu = clock(), cpu_clock()
            variant.call()
            total = totals[id(variant)]
            total[0] += clock() - wall
            total[1] += cpu_clock() - cpu
    for variant in variants:
        variant.wall.append(totals[id(variant)][0] / calls / 1000)
        variant.cpu.append(totals[id(variant)][1] / calls / 1000)


def inside_empty_span(tracer: trace.Tracer, call: Callable[[], Any]) -> Callable[[], None]:
    """``call`` with one span around it, current while it runs: the floor of any instrumentation."""

    def floor() -> None:
        span = tracer.start_span("chat gpt-4o-mini", kind=trace.SpanKind.CLIENT)
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            call()
        finally:
            otel_context.detach(token)
            span.end()

    return floor


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40, help="rounds (default: %(default)s)")
    parser.add_argument("--calls", type=int, default=50, help="calls per variant per round (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=50, help="untimed calls per variant first (default: %(default)s)")
    parser.add_argument(
        "--latency-ms", type=float, default=0.0, help="server delay before each answer (default: %(default)s)"
    )
    parser.add_argument(
        "--server", choices=("subprocess", "thread"), default="subprocess", help="where the fake server runs"
    )
    parser.add_argument("--no-gc", action="store_true", help="disable the garbage collector in the timed rounds")
    args = parser.parse_args(argv)

    configuration = configure(exporter="none")  # stamping and redaction, as an application has them
    assert configuration.tracer_provider is not None, "OTEL_SDK_DISABLED is set"
    exporter = InMemorySpanExporter()
    configuration.tracer_provider.add_span_processor(BatchSpanProcessor(exporter))  # export off the call path

    # "plain" calls the SDK's own method, kept from before instrumenting: the same code minus ours.
    create = Completions.create
    OpenAIInstrumentor().instrument()
    with (
        fake_server(args.server, args.latency_ms / 1000) as base_url,
        openai.OpenAI(base_url=base_url, api_key="test", max_retries=0) as client,
    ):
        completions = client.chat.completions
        request: dict[str, Any] = {"model": "gpt-4o-mini", "messages": MESSAGES, "temperature": 0.2}
        streamed: dict[str, Any] = {**request, "stream": True, "stream_options": {"include_usage": True}}

        def read(stream: Any) -> None:
            for _ in stream:
                pass

        def answer() -> Any:
            return create(completions, **request)

        bare_tracer = TracerProvider().get_tracer("bench")  # no processors: the SDK alone
        batching = TracerProvider()  # the SDK with the exporting every application has, nothing of ours
        batching.add_span_processor(BatchSpanProcessor(InMemorySpanExporter()))
        batch_tracer = batching.get_tracer("bench")
        our_tracer = configuration.tracer_provider.get_tracer("bench")
        # In each group the first variant is the baseline and the last the one with a target.
        groups = {
            "answer": [
                Variant("answer plain", answer),
                Variant("empty span", inside_empty_span(bare_tracer, answer)),
                Variant("empty span, batch", inside_empty_span(batch_tracer, answer)),
                Variant("empty span, ours", inside_empty_span(our_tracer, answer)),
                Variant("answer traced", lambda: completions.create(**request)),
            ],
            "stream": [
                Variant("stream plain", lambda: read(create(completions, **streamed))),
                Variant("stream traced", lambda: read(completions.create(**streamed))),
            ],
        }
        order = random.Random(0)  # the same shuffles in every run
        with session(user_id="bench-user", roles=["clerk"], trigger_source="api", trigger_type="POST /claims"):
            for variants in groups.values():
                for _ in range(args.warmup):
                    for variant in variants:
                        variant.call()
            if args.no_gc:
                gc.disable()
            try:
                for _ in range(args.rounds):
                    for variants in groups.values():
                        run_round(variants, args.calls, order)
                    exporter.clear()
            finally:
                gc.enable()
    OpenAIInstrumentor().uninstrument()
    assert len(groups["answer"][-1].wall) == args.rounds

    print(
        f"python {sys.version.split()[0]}, openai {openai.__version__}, {args.rounds} rounds x {args.calls} calls "
        f"per variant, in shuffled turns; fake OpenAI server on loopback ({args.server}), "
        f"{args.latency_ms:g} ms latency; "
        f"content capture off{'; gc disabled while timing' if args.no_gc else ''}"
    )
    print()
    header = (
        f"{'variant':<17} {'wall µs':>9} {'min':>7} {'CPU µs':>8} {'min':>7} "
        f"{'wall ratio':>11} {'CPU ratio':>10} {'+CPU µs':>8}  target (wall ratio)"
    )
    print(header)
    print("-" * len(header))
    verdicts: list[bool] = []
    for plain, *others in groups.values():
        for variant in (plain, *others):
            line = (
                f"{variant.name:<17} {statistics.median(variant.wall):>9.0f} {min(variant.wall):>7.0f} "
                f"{statistics.median(variant.cpu):>8.0f} {min(variant.cpu):>7.0f}"
            )
            if variant is plain:
                print(f"{line} {'':>11} {'':>10} {'':>8}  baseline")
                continue
            wall_ratio = statistics.median(t / p for t, p in zip(variant.wall, plain.wall, strict=True))
            cpu_ratio = statistics.median(t / p for t, p in zip(variant.cpu, plain.cpu, strict=True))
            extra = statistics.median(t - p for t, p in zip(variant.cpu, plain.cpu, strict=True))
            if variant is others[-1]:
                ok = wall_ratio <= TARGET
                verdicts.append(ok)
                verdict = f"<= {TARGET:.2f}x  {'PASS' if ok else 'FAIL'}"
            else:
                verdict = "floor"
            print(f"{line} {wall_ratio:>10.3f}x {cpu_ratio:>9.3f}x {extra:>8.0f}  {verdict}")
    return 0 if all(verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
