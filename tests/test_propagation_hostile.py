"""Hostile and awkward inbound baggage, and outbound hosts that are not what they seem, against the
propagator's policies. Where the problem is HTTP's, the request really crosses loopback: uvicorn
(ASGI) and wsgiref (WSGI) behind our ``SessionMiddleware``, called by httpx and requests."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import httpx
import pytest
import requests
from opentelemetry import baggage, trace
from opentelemetry import context as otel_context
from opentelemetry.baggage.propagation import W3CBaggagePropagator

from _servers import RunningServer, start_uvicorn, start_wsgi
from sessiontrace import _log, _values, propagation, semconv
from sessiontrace.context import current_session, new_session_id, session
from sessiontrace.policy import InboundPolicy, OutboundPolicy, parse_networks, sign, signature_is_valid
from sessiontrace.propagation import destination_allowed, extract, inject
from sessiontrace.testing import CapturedSpans, capture
from sessiontrace.workflow import current_run, workflow

SIGNING_KEY = b"hostile-test-signing-key-0123456789"
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def assert_session_received(client: str, url: str, recorder: RunningServer) -> None:
    """One GET to ``url`` with ``client`` (httpx or requests) inside a session: the recorder got its id."""
    with session(user_id="alice") as current:
        if client == "httpx":
            httpx.get(url, timeout=10)
        else:
            requests.get(url, timeout=10)
    (received,) = recorder.requests
    assert f"session.id={current.id}" in received["baggage"].split(",")


# --- the application under test: it reports the session and run it finds itself in ----------------------
def report() -> bytes:
    current, run = current_session(), current_run()
    return json.dumps(
        {
            "session_id": current.id if current else None,
            "user_id": current.user_id if current else None,
            "trigger_type": current.trigger_type if current else None,
            "run": [run.name, run.id] if run else None,
        }
    ).encode()


async def asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": report()})


def wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    body = report()
    start_response("200 OK", [("content-type", "application/json")])
    return [body]


def start(kind: str) -> RunningServer:
    from sessiontrace.integrations import asgi, wsgi

    capture()  # stamping and propagation configured before the middleware is built
    if kind == "asgi":
        return start_uvicorn(asgi.SessionMiddleware(asgi_app))
    return start_wsgi(wsgi.SessionMiddleware(wsgi_app))


@pytest.fixture(scope="module", params=["asgi", "wsgi"])
def server(request: pytest.FixtureRequest) -> Iterator[RunningServer]:
    running = start(request.param)
    try:
        yield running
    finally:
        running.stop()


def get(url: str, headers: dict[str, Any] | None = None) -> httpx.Response:
    with httpx.Client(timeout=10) as client:
        return client.get(url, headers=headers)


def sessiontrace_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == "sessiontrace"]


# --- 1. a signature that is not even ASCII ----------------------------------------------------------------
class TestNonAsciiSignature:
    """A signature that percent-decodes to non-ASCII is a bad signature like any other: the request
    is served, and extraction never raises, whatever goes wrong inside it."""

    @pytest.mark.parametrize("require_signature", [False, True])
    def test_non_ascii_signature_is_a_bad_signature_not_a_failed_request(
        self, server: RunningServer, require_signature: bool, capsession: CapturedSpans, reconfigure: Any
    ) -> None:
        reconfigure(inbound=InboundPolicy(signing_key=SIGNING_KEY, require_signature=require_signature))
        sid = new_session_id()
        hostile = {"baggage": f"session.id={sid},user.id=admin,{semconv.BAGGAGE_SIGNATURE}=%C3%A9"}

        reply = get(server.url + "/work", hostile)

        assert reply.status_code == 200
        minted = reply.headers[semconv.SESSION_RESPONSE_HEADER]
        assert (minted != sid) if require_signature else (minted == sid)
        assert reply.json()["user_id"] is None  # unverified: the user is not believed

    def test_signature_check_refuses_non_ascii_text(self) -> None:
        entries = {semconv.BAGGAGE_SESSION_ID: new_session_id()}
        assert not signature_is_valid(entries, "é", SIGNING_KEY)
        assert not signature_is_valid(entries, sign(entries, SIGNING_KEY) + "é", SIGNING_KEY)
        assert signature_is_valid(entries, sign(entries, SIGNING_KEY), SIGNING_KEY)

    def test_unexpected_error_while_admitting_leaves_the_carrier_unadmitted(
        self, capsession: CapturedSpans, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        def broken(entries: Any, context: Any) -> Any:
            raise RuntimeError("a bug of ours")

        monkeypatch.setattr(propagation, "admit_run", broken)
        _log.reset_warnings()
        caplog.set_level(logging.WARNING, logger="sessiontrace")
        carrier = {"baggage": f"session.id={new_session_id()},user.id=admin"}

        with session(user_id="alice") as mine:
            outer = otel_context.get_current()
            for _ in range(3):
                assert current_session(extract(carrier)) is None
                assert current_session(extract(carrier, context=outer)) == mine
        assert len([m for m in sessiontrace_warnings(caplog) if "RuntimeError" in m]) == 1


# --- 2. numeric host names ------------------------------------------------------------------------------
class TestNumericHosts:
    """``134744072``, ``0x8080808`` and ``010.010.010.010`` are IPv4 addresses to HTTP clients (here
    all 8.8.8.8), not private single-label names: the IP rules of the allow-list apply to them."""

    @pytest.mark.parametrize(
        "host", ["134744072", "0x8080808", "0X8080808", "3627734734", "010.010.010.010", "8.8.2056", "99999999999"]
    )
    def test_public_numeric_host_gets_no_session(self, host: str, capsession: CapturedSpans) -> None:
        url = f"http://{host}/hook"
        assert not destination_allowed(url)
        with session(user_id="alice"):
            carrier = inject({}, destination=url)
        assert semconv.BAGGAGE_SESSION_ID not in carrier.get("baggage", "")

    @pytest.mark.parametrize("host", ["2130706433", "0x7f000001", "017700000001", "127.1", "ledger", "ledger.svc"])
    def test_private_hosts_still_get_it(self, host: str, capsession: CapturedSpans) -> None:
        assert destination_allowed(f"http://{host}/hook")

    @pytest.mark.parametrize("client", ["httpx", "requests"])
    def test_numeric_host_matches_its_network_entry_over_http(
        self,
        client: str,
        header_recorder: RunningServer,
        outbound_policy: None,
        reconfigure: Callable[..., Any],
    ) -> None:
        """2130706433 is 127.0.0.1: the client connects there, so a 127.0.0.0/8 entry covers it."""
        reconfigure(outbound=OutboundPolicy(("127.0.0.0/8",)))
        url = f"http://2130706433:{header_recorder.port}/hook"
        assert_session_received(client, url, header_recorder)


# --- 3. whitespace around signed values ------------------------------------------------------------------
class TestWhitespaceInSignedValues:
    """Baggage receivers strip values; signer and verifier agree on the stripped form, so a value
    with surrounding whitespace verifies after the trip and arrives as the sender keeps it."""

    @pytest.mark.parametrize(
        "values",
        [{"user_id": "alice "}, {"user_id": " alice"}, {"user_id": "alice", "trigger_type": "GET "}],
        ids=["user-trailing", "user-leading", "trigger-trailing"],
    )
    def test_signed_values_with_whitespace_verify_across_http(
        self, server: RunningServer, values: dict[str, str], capsession: CapturedSpans, reconfigure: Any
    ) -> None:
        reconfigure(inbound=InboundPolicy(signing_key=SIGNING_KEY, require_signature=True))
        with session(trigger_source="api", **values) as current:
            headers = dict(inject({}))

        reply = get(server.url + "/work", headers)

        assert reply.json()["session_id"] == current.id
        assert reply.json()["user_id"] == current.user_id == "alice"
        assert reply.json()["trigger_type"] == current.trigger_type

    def test_values_are_kept_as_receivers_read_them(self) -> None:
        assert _values.user_id("  alice ") == "alice"
        assert _values.user_id("\xa0alice\u3000") == "alice"  # str.strip(), as the W3C propagator uses
        assert _values.trigger_type("GET ") == "GET"
        with pytest.raises(_values.InvalidValue):
            _values.user_id("   ")
        with pytest.raises(_values.InvalidValue):
            _values.user_id("alice\n")  # a control character is refused, not stripped away
        sid = new_session_id()
        padded = {semconv.BAGGAGE_SESSION_ID: sid, semconv.BAGGAGE_USER_ID: " alice "}
        assert sign(padded, SIGNING_KEY) == sign({**padded, semconv.BAGGAGE_USER_ID: "alice"}, SIGNING_KEY)


# --- 4. malformed headers do not flood the log -----------------------------------------------------------
MALFORMED = {
    "malformed entry": "FAKE LOG LINE: user admin logged in",
    "non-ascii entry": "session.id={sid},x=\xe9t\xe9",
    "more than 8192 bytes once encoded": "k=" + "\xff" * 5000,
}


class TestOneWarningPerReason:
    """However many requests carry a malformed header, the log gets one warning per reason, from
    ``sessiontrace``; the inner propagators' per-request warnings (quoting the sender) are not
    logged while we extract."""

    @pytest.mark.parametrize("case", list(MALFORMED))
    def test_malformed_baggage_warns_once_not_per_request(
        self, server: RunningServer, case: str, capsession: CapturedSpans, caplog: pytest.LogCaptureFixture
    ) -> None:
        _log.reset_warnings()
        caplog.set_level(logging.WARNING)
        sid = new_session_id()
        header = {"baggage": MALFORMED[case].format(sid=sid).encode("latin-1")}  # bytes on the wire, as sent

        replies = [get(server.url + "/work", header) for _ in range(5)]

        assert all(reply.status_code == 200 for reply in replies)
        assert [r.name for r in caplog.records if r.name.startswith("opentelemetry")] == []
        assert len(sessiontrace_warnings(caplog)) == 1, sessiontrace_warnings(caplog)
        assert caplog.text.count("FAKE LOG LINE") <= 1  # the sender's text reaches the log once at most
        if case == "non-ascii entry":  # only the bad entry is dropped: the session id still counts
            assert replies[0].headers[semconv.SESSION_RESPONSE_HEADER] == sid
        if case == "more than 8192 bytes once encoded":
            assert "larger than 8192 bytes" in sessiontrace_warnings(caplog)[0]

    def test_malformed_trace_state_warns_once(
        self, capsession: CapturedSpans, caplog: pytest.LogCaptureFixture
    ) -> None:
        _log.reset_warnings()
        caplog.set_level(logging.WARNING)
        for _ in range(3):
            extract({"traceparent": TRACEPARENT, "tracestate": "FAKE LOG LINE=1"})
        assert [r.name for r in caplog.records] == ["sessiontrace"]

    def test_inner_propagators_still_log_outside_our_extraction(
        self, capsession: CapturedSpans, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.WARNING)
        W3CBaggagePropagator().extract({"baggage": "FAKE LOG LINE"})
        assert [r.name for r in caplog.records] == ["opentelemetry.baggage.propagation"]


# --- 7. IPv4 peers of a dual-stack server ----------------------------------------------------------------
def start_uvicorn_dual_stack(app: Any) -> RunningServer:
    """uvicorn on an IPv6 socket that accepts IPv4 too (as when listening on "::"), bound to the
    IPv4-mapped loopback address only: IPv4 peers arrive as ::ffff:127.0.0.1."""
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(("::ffff:127.0.0.1", 0))
    except OSError as error:
        sock.close()
        pytest.skip(f"no dual-stack IPv6 sockets here: {error}")
    return start_uvicorn(app, sock)


class TestDualStackPeers:
    """A server listening on "::" sees an IPv4 peer as ::ffff:a.b.c.d; IPv4 trusted networks match it."""

    def test_ipv4_peer_of_a_dual_stack_server_is_trusted(
        self, capsession: CapturedSpans, reconfigure: Callable[..., Any]
    ) -> None:
        from sessiontrace.integrations import asgi

        reconfigure(inbound=InboundPolicy(trusted_peers=parse_networks(["127.0.0.1/32"])))
        peers: list[str] = []

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            peers.append(scope["client"][0])
            await asyncio.sleep(0)
            await asgi_app(scope, receive, send)

        running = start_uvicorn_dual_stack(asgi.SessionMiddleware(app))
        try:
            sid = new_session_id()
            reply = get(running.url + "/work", {"baggage": f"session.id={sid},user.id=alice"})
        finally:
            running.stop()

        assert peers == ["::ffff:127.0.0.1"]
        assert reply.json()["session_id"] == sid
        assert reply.json()["user_id"] == "alice"

    def test_mapped_peer_matches_ipv4_and_mapped_networks(self) -> None:
        ipv4 = InboundPolicy(trusted_peers=parse_networks(["10.0.0.0/8"]))
        assert ipv4.peer_is_trusted("::ffff:10.1.2.3")
        assert ipv4.peer_is_trusted("10.1.2.3")
        assert not ipv4.peer_is_trusted("::ffff:8.8.8.8")
        # A network written in the mapped form keeps matching the peers it matched before.
        mapped = InboundPolicy(trusted_peers=parse_networks(["::ffff:10.0.0.0/104"]))
        assert mapped.peer_is_trusted("::ffff:10.1.2.3")
        assert not mapped.peer_is_trusted("::ffff:8.8.8.8")


# --- 10. workflow runs under require_signature -----------------------------------------------------------
class TestSignedRuns:
    """With ``require_signature`` a workflow run is continued only when the signature covers it;
    without it, unsigned runs are continued as before."""

    def test_unsigned_run_is_dropped_when_signatures_are_required(
        self, server: RunningServer, capsession: CapturedSpans, reconfigure: Any
    ) -> None:
        reconfigure(inbound=InboundPolicy(signing_key=SIGNING_KEY, require_signature=True))
        victim_run = new_session_id()
        hostile = {"baggage": f"session.id={new_session_id()},workflow.name=claims,workflow.execution.id={victim_run}"}

        reply = get(server.url + "/work", hostile)

        assert reply.status_code == 200
        assert reply.json()["run"] is None

    def test_signed_run_is_continued_when_signatures_are_required(
        self, server: RunningServer, capsession: CapturedSpans, reconfigure: Any
    ) -> None:
        reconfigure(inbound=InboundPolicy(signing_key=SIGNING_KEY, require_signature=True))
        with session(user_id="alice") as current, workflow("claims triage") as run:
            headers = dict(inject({}))

        reply = get(server.url + "/work", headers)

        assert reply.json()["run"] == [run.name, run.id]
        assert reply.json()["session_id"] == current.id
        assert reply.json()["user_id"] == "alice"

    def test_run_swapped_under_a_signature_is_dropped(self, capsession: CapturedSpans, reconfigure: Any) -> None:
        reconfigure(inbound=InboundPolicy(signing_key=SIGNING_KEY, require_signature=True))
        with session(user_id="alice"), workflow("claims triage") as run:
            headers = dict(inject({}))
        headers["baggage"] = headers["baggage"].replace(run.id, new_session_id())

        assert current_run(extract(headers)) is None

    @pytest.mark.parametrize("signing_key", [None, SIGNING_KEY])
    def test_unsigned_run_is_continued_without_require_signature(
        self, signing_key: bytes | None, capsession: CapturedSpans, reconfigure: Any
    ) -> None:
        reconfigure(inbound=InboundPolicy(signing_key=signing_key))
        run_id = new_session_id()
        ctx = extract({"baggage": f"workflow.name=claims,workflow.execution.id={run_id}"})
        run = current_run(ctx)
        assert run is not None
        assert run.id == run_id

    @pytest.mark.parametrize("require_signature", [False, True])
    def test_signature_from_before_runs_were_signed_still_covers_the_session(
        self, require_signature: bool, capsession: CapturedSpans, reconfigure: Any
    ) -> None:
        """A sender of the previous version signs the session entries only, run or no run."""
        reconfigure(inbound=InboundPolicy(signing_key=SIGNING_KEY, require_signature=require_signature))
        sid, run_id = new_session_id(), new_session_id()
        old_signature = sign({semconv.BAGGAGE_SESSION_ID: sid, semconv.BAGGAGE_USER_ID: "alice"}, SIGNING_KEY)
        header = (
            f"session.id={sid},user.id=alice,{semconv.BAGGAGE_SIGNATURE}={old_signature},"
            f"workflow.name=claims,workflow.execution.id={run_id}"
        )

        ctx = extract({"baggage": header})

        continued = current_session(ctx)
        assert continued is not None
        assert continued.user_id == "alice"
        assert (current_run(ctx) is None) if require_signature else (current_run(ctx) is not None)


# --- 11. extracting into a context that already has a session --------------------------------------------
class TestExtractIntoContext:
    """``extract(carrier, context=ctx)`` judges what the carrier brought; the session already in
    ``ctx`` stays as it is unless the carrier brings an admissible one."""

    def test_carrier_without_baggage_keeps_the_context_session(self, capsession: CapturedSpans) -> None:
        with session(user_id="alice", roles=["clerk"]) as mine:
            ctx = extract({"traceparent": TRACEPARENT}, context=otel_context.get_current())

        assert current_session(ctx) == mine
        assert baggage.get_baggage(semconv.BAGGAGE_USER_ID, ctx) == "alice"
        assert format(trace.get_current_span(ctx).get_span_context().trace_id, "032x") == TRACEPARENT[3:35]

    def test_carrier_session_replaces_the_context_session(self, capsession: CapturedSpans) -> None:
        theirs = new_session_id()
        with session(user_id="alice"):
            ctx = extract({"baggage": f"session.id={theirs},user.id=mallory"}, context=otel_context.get_current())

        continued = current_session(ctx)
        assert continued is not None
        assert (continued.id, continued.user_id, continued.trusted) == (theirs, None, False)
        assert baggage.get_baggage(semconv.BAGGAGE_USER_ID, ctx) is None  # alice does not ride along

    def test_refused_carrier_session_leaves_the_context_session(self, capsession: CapturedSpans) -> None:
        with session(user_id="alice") as mine:
            ctx = extract({"baggage": "session.id=not-a-uuid,user.id=mallory"}, context=otel_context.get_current())

        assert current_session(ctx) == mine
        assert baggage.get_baggage(semconv.BAGGAGE_USER_ID, ctx) == "alice"

    def test_other_baggage_merges_under_the_carrier(self, capsession: CapturedSpans) -> None:
        base = baggage.set_baggage("region", "us", baggage.set_baggage("tenant", "acme"))
        ctx = extract({"baggage": "region=eu,lang=fr"}, context=base)
        assert dict(baggage.get_all(ctx)) == {"tenant": "acme", "region": "eu", "lang": "fr"}


# --- 12. allow-list entries written with capitals or a trailing dot ------------------------------------------
class TestAllowListEntries:
    """Host names are case-insensitive and may be written fully qualified: allow-list entries are
    compared the way destinations are, lower-case and without the trailing dot."""

    @pytest.mark.parametrize("entry", ["Ledger.Example.com", "ledger.example.com.", "*.Example.COM", "*.example.com."])
    def test_entry_matches_whatever_its_case_or_trailing_dot(self, entry: str) -> None:
        policy = OutboundPolicy((entry,))
        assert policy.allows("ledger.example.com")
        assert policy.allows("LEDGER.example.com.")
        assert not policy.allows("api.openai.com")

    def test_entries_are_configured_from_the_environment_alike(self, reconfigure: Callable[..., Any]) -> None:
        reconfigure(environ={"SESSIONTRACE_BAGGAGE_HOSTS": "Ledger.Example.com., *.Internal.Example.COM"})
        assert destination_allowed("https://ledger.example.com/reserve")
        assert destination_allowed("https://db.internal.example.com/")
        assert not destination_allowed("https://example.com/")

    def test_a_bare_wildcard_dot_is_not_every_host(self) -> None:
        assert not OutboundPolicy(("*.",)).allows("api.openai.com")

    @pytest.mark.parametrize("client", ["httpx", "requests"])
    def test_capitalised_entry_receives_the_session_over_http(
        self,
        client: str,
        header_recorder: RunningServer,
        outbound_policy: None,
        reconfigure: Callable[..., Any],
    ) -> None:
        reconfigure(outbound=OutboundPolicy(("LocalHost.",)))
        url = f"http://localhost:{header_recorder.port}/allowed"
        assert_session_received(client, url, header_recorder)


class TestUnencodableValues:
    def test_a_lone_surrogate_in_a_user_id_is_refused_not_left_to_break_every_call(self) -> None:
        # Accepted, it would make every later inject() of the session raise UnicodeEncodeError.
        with pytest.raises(ValueError, match="user id"), session(user_id="alice\ud800"):
            pass
        with session(user_id="alice"):
            carrier: dict[str, str] = {}
            inject(carrier)
            assert "user.id=alice" in carrier["baggage"]
