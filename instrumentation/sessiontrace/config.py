"""``configure()``: the one entry point, and the table of environment variables it honours.

Rules: add to what the application already set up, never replace it; every option has an
environment variable; a malformed variable is a ``ConfigError`` naming it, at startup, rather
than a surprise at the first request.
"""

from __future__ import annotations

import ipaddress
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

from sessiontrace._log import warn_once
from sessiontrace.policy import PRIVATE, InboundPolicy, OutboundPolicy, parse_networks
from sessiontrace.processors import SessionLogRecordProcessor, SessionSpanProcessor, install_log_record_factory
from sessiontrace.propagation import SessionPropagator, session_propagator
from sessiontrace.redaction import (
    DEFAULT_ALLOW_KEYS,
    DEFAULT_DENY_KEYS,
    MAX_VALUE_CHARS,
    Redactor,
    install_log_redaction,
    install_redaction,
)

ExporterKind = Literal["auto", "otlp", "store", "none"]


class ConfigError(ValueError):
    """A configuration value (argument or environment variable) is malformed."""


@dataclass(frozen=True)
class EnvVar:
    name: str
    default: str
    doc: str


ENV_VARS: tuple[EnvVar, ...] = (
    EnvVar(
        "SESSIONTRACE_EXPORTER",
        "auto",
        "`auto`: OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set, "
        "else the embedded store; `otlp`; `store`; `none` (stamping and propagation only).",
    ),
    EnvVar(
        "SESSIONTRACE_STORE",
        "$XDG_DATA_HOME/sessiontrace/spans.sqlite3",
        "Path of the embedded SQLite span store.",
    ),
    EnvVar(
        "SESSIONTRACE_SIGNING_KEY",
        "",
        "HMAC key: sessions we send are signed, signed sessions we receive keep their user id.",
    ),
    EnvVar(
        "SESSIONTRACE_REQUIRE_SIGNATURE",
        "false",
        "Reject inbound sessions that are not signed with the signing key.",
    ),
    EnvVar(
        "SESSIONTRACE_TRUSTED_PEERS",
        "",
        "Comma-separated IP networks whose inbound user id and roles are believed unsigned.",
    ),
    EnvVar(
        "SESSIONTRACE_BAGGAGE_HOSTS",
        PRIVATE,
        "Comma-separated hosts that may receive session baggage: names, `*.suffix`, IPs, CIDRs, "
        "`*`, `@private` (loopback, private networks, single-label and `.internal`-style names).",
    ),
    EnvVar(
        "SESSIONTRACE_JAEGER_PROPAGATION",
        "false",
        "Also read and write Jaeger's `uber-trace-id` / `uberctx-*` headers (legacy jaeger-client peers).",
    ),
    EnvVar("SESSIONTRACE_STAMP_LOGS", "true", "Stamp stdlib and OpenTelemetry log records."),
    EnvVar(
        "SESSIONTRACE_INSTRUMENT_THREADS",
        "true",
        "Carry the context into `threading.Thread` and `ThreadPoolExecutor` (contrib threading instrumentor).",
    ),
    EnvVar(
        "SESSIONTRACE_REDACT",
        "true",
        "Redact personal data and secrets from every span and log record before export (built-in detectors, "
        "deny and allow keys, size cap).",
    ),
    EnvVar(
        "SESSIONTRACE_REDACT_DENY_KEYS",
        "",
        "Comma-separated key globs whose values are always replaced whole, added to the defaults "
        "(`*password*`, `*secret*`, `*token`, `*authorization*`, `*cookie*`...).",
    ),
    EnvVar(
        "SESSIONTRACE_REDACT_ALLOW_KEYS",
        "",
        "Comma-separated key globs never scanned, added to the defaults (`session.id`, `user.id`, `workflow.*`...).",
    ),
    EnvVar(
        "SESSIONTRACE_REDACT_MAX_CHARS",
        str(MAX_VALUE_CHARS),
        "Longest string value exported; longer ones are cut with a marker. `0`: no cap.",
    ),
)
"""Every variable we read, besides the standard ``OTEL_*`` ones (``OTEL_SERVICE_NAME``,
``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_EXPORTER_OTLP_*``, ``OTEL_PROPAGATORS``, ``OTEL_SDK_DISABLED``)."""

_DEFAULTS = {var.name: var.default for var in ENV_VARS}


@dataclass(frozen=True)
class Configuration:
    """What ``configure()`` did."""

    tracer_provider: TracerProvider | None
    exporter: ExporterKind
    store_path: Path | None
    propagator: SessionPropagator
    reused_provider: bool
    redactor: Redactor | None = None


_lock = threading.Lock()
_configured: Configuration | None = None


def configure(
    *,
    service_name: str | None = None,
    exporter: ExporterKind | None = None,
    store_path: str | os.PathLike[str] | None = None,
    inbound: InboundPolicy | None = None,
    outbound: OutboundPolicy | None = None,
    jaeger_propagation: bool | None = None,
    stamp_logs: bool | None = None,
    instrument_threads: bool | None = None,
    tracer_provider: TracerProvider | None = None,
    redaction: bool | Redactor | None = None,
    capture_content: bool | None = None,
    environ: Mapping[str, str] | None = None,
) -> Configuration:
    """Set up session stamping, propagation and export. Arguments win over environment variables.

    If the application already registered an SDK ``TracerProvider`` (or passes one), our span
    processor is added to it and its exporters are left alone; an exporter of ours is added
    only when ``exporter`` (or ``SESSIONTRACE_EXPORTER``) asks for one. Otherwise a provider is
    created with the ``OTEL_*`` resource and an exporter chosen by ``exporter``.
    Calling ``configure()`` again updates the policies; processors are never added twice, so the
    exporter of the first call stays (asking for another one logs a warning) and is the one the
    returned ``Configuration`` reports.

    ``redaction``: a ``Redactor``, True (one built from the ``SESSIONTRACE_REDACT_*`` variables)
    or False; on by default. Its processor goes first in the provider's list, before any exporter.
    ``capture_content``: record AI prompts and answers (default: the
    ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT`` variable, off).
    """
    global _configured
    env = os.environ if environ is None else environ
    read = _Reader(env)

    if inbound is None:
        signing_key = read.text("SESSIONTRACE_SIGNING_KEY").encode() or None
        require_signature = read.flag("SESSIONTRACE_REQUIRE_SIGNATURE")
        if require_signature and not signing_key:
            raise ConfigError("SESSIONTRACE_REQUIRE_SIGNATURE is true but SESSIONTRACE_SIGNING_KEY is not set")
        inbound = InboundPolicy(
            signing_key=signing_key,
            require_signature=require_signature,
            trusted_peers=read.parsed("SESSIONTRACE_TRUSTED_PEERS", lambda v: parse_networks(_split(v))),
        )
    outbound = outbound or read.parsed("SESSIONTRACE_BAGGAGE_HOSTS", lambda v: OutboundPolicy(tuple(_split(v))))
    jaeger = read.flag("SESSIONTRACE_JAEGER_PROPAGATION") if jaeger_propagation is None else jaeger_propagation
    stamp_logs = read.flag("SESSIONTRACE_STAMP_LOGS") if stamp_logs is None else stamp_logs
    threads = read.flag("SESSIONTRACE_INSTRUMENT_THREADS") if instrument_threads is None else instrument_threads
    explicit_exporter = exporter is not None or "SESSIONTRACE_EXPORTER" in env
    explicit_request = explicit_exporter or store_path is not None or bool(env.get("SESSIONTRACE_STORE"))
    kind = exporter or read.choice("SESSIONTRACE_EXPORTER", ("auto", "otlp", "store", "none"))
    if kind == "auto":
        has_endpoint = env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        kind = "otlp" if has_endpoint else "store"
    protocol = _otlp_protocol(env) if kind == "otlp" else None  # validated before anything changes
    # Absolute, as reported: a relative path means the directory configure() ran in.
    path = (Path(store_path).expanduser() if store_path is not None else _store_path(env)).absolute()
    redactor = _redactor(redaction, read)
    if capture_content is not None:
        from sessiontrace.ai.content import set_capture_content

        set_capture_content(capture_content)

    with _lock:
        propagator = session_propagator(inbound, outbound, jaeger=jaeger)
        propagate.set_global_textmap(propagator)
        if "baggage" not in propagator.fields:
            warn_once(
                "config:no-baggage",
                "sessiontrace: OTEL_PROPAGATORS has no 'baggage': sessions will not cross process boundaries",
            )

        if read.flag("OTEL_SDK_DISABLED", default="false"):
            _configured = Configuration(None, "none", None, propagator, reused_provider=False)
            return _configured

        provider, reused = _provider(tracer_provider, service_name)
        # First, before the application's exporting processors (and ours, added below).
        install_redaction(provider, redactor)
        install_log_redaction(redactor)
        _watch_later_logger_providers(redactor, stamp_logs)
        if not _has_processor(provider, SessionSpanProcessor):
            provider.add_span_processor(SessionSpanProcessor())
        installed = _our_exporting(provider)
        requested_path = path if kind == "store" else None
        if installed is None and (not reused or explicit_exporter) and kind != "none":
            installed = _Exporting(_exporter(kind, path, protocol), kind, requested_path)
            provider.add_span_processor(installed)
        elif (
            installed is not None
            and explicit_request
            and (kind, requested_path) != (installed.kind, installed.store_path)
        ):
            warn_once(
                "config:exporter-kept",
                "sessiontrace: configure() asked for exporter %r%s, but the %r exporter of an earlier "
                "configure() is kept (exporters are never added twice nor replaced)",
                kind,
                f" at {path}" if kind == "store" else "",
                installed.kind,
            )
        # Report what exports: a reused provider keeps only the application's exporters, and an
        # earlier configure() keeps its own.
        exporting: ExporterKind = installed.kind if installed is not None else "none"
        exporting_to = installed.store_path if installed is not None else None
        if not reused:
            trace.set_tracer_provider(provider)

        if stamp_logs:
            install_log_record_factory()
            _stamp_otel_logs()
        if threads:
            _instrument_threads()

        _configured = Configuration(
            provider, exporting, exporting_to, propagator, reused_provider=reused, redactor=redactor
        )
        return _configured


class _Exporting(BatchSpanProcessor):
    """Our exporting processor, marked so a second ``configure()`` does not add another, and
    remembering what it exports to so that call can report it."""

    def __init__(self, exporter: SpanExporter, kind: ExporterKind, store_path: Path | None) -> None:
        super().__init__(exporter)
        self.kind: ExporterKind = kind
        self.store_path = store_path


def _provider(given: TracerProvider | None, service_name: str | None) -> tuple[TracerProvider, bool]:
    if given is not None:
        return given, True
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        return current, True
    # Resource.create reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; an argument wins.
    resource = Resource.create({"service.name": service_name} if service_name else {})
    return TracerProvider(resource=resource), False


def _otlp_protocol(env: Mapping[str, str]) -> str:
    for variable in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):  # the first set wins
        protocol = env.get(variable)
        if protocol:
            if protocol not in ("grpc", "http/protobuf"):
                raise ConfigError(f"{variable} must be grpc or http/protobuf, got {protocol!r}")
            return protocol
    return "http/protobuf"


def _exporter(kind: ExporterKind, path: Path, protocol: str | None) -> SpanExporter:
    if kind == "store":
        from sessiontrace.store import StoreSpanExporter

        return StoreSpanExporter(path)
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    return HttpExporter()


def _processors(provider: TracerProvider) -> tuple[Any, ...]:
    multi = getattr(provider, "_active_span_processor", None)
    return tuple(getattr(multi, "_span_processors", ()))


def _has_processor(provider: TracerProvider, kind: type) -> bool:
    return any(isinstance(processor, kind) for processor in _processors(provider))


def _our_exporting(provider: TracerProvider) -> _Exporting | None:
    return next((p for p in _processors(provider) if isinstance(p, _Exporting)), None)


def _stamp_otel_logs() -> None:
    """Add our log processor to an SDK ``LoggerProvider`` the application registered, if any."""
    try:
        from opentelemetry import _logs
        from opentelemetry.sdk._logs import LoggerProvider
    except ImportError:
        return
    provider = _logs.get_logger_provider()
    if isinstance(provider, LoggerProvider):
        multi = getattr(provider, "_multi_log_record_processor", None)
        processors = getattr(multi, "_log_record_processors", ())
        if not any(isinstance(p, SessionLogRecordProcessor) for p in processors):
            ours = SessionLogRecordProcessor()
            lock = getattr(multi, "_lock", None)
            if lock is not None and isinstance(processors, tuple):
                # First, not last: a span is stamped at start and exported at end, but a log record
                # is exported inside the same on_emit pass, so the application's exporting
                # processors (added before configure()) would otherwise send it unstamped.
                with lock:
                    multi._log_record_processors = (ours, *multi._log_record_processors)  # type: ignore[union-attr]
            else:
                provider.add_log_record_processor(ours)  # type: ignore[arg-type]


_log_redactor: Redactor | None = None
"""The redactor of the last ``configure()``: what a ``LoggerProvider`` registered after it gets."""
_log_stamping = False
"""Whether the last ``configure()`` stamps logs: a ``LoggerProvider`` registered after it is stamped too."""
_log_hook_installed = False


def _watch_later_logger_providers(redactor: Redactor | None, stamp: bool) -> None:
    """Redact and stamp the log records of an SDK ``LoggerProvider`` registered *after*
    ``configure()`` too (logging is often set up after tracing). The API has no hook for that: the
    module function that ``set_logger_provider()`` (and the ``OTEL_PYTHON_LOGGER_PROVIDER`` path)
    calls is wrapped, once per process. If the API's internals differ, a warning says so once.
    Called under ``_lock``."""
    global _log_redactor, _log_stamping, _log_hook_installed
    _log_redactor, _log_stamping = redactor, stamp
    if _log_hook_installed or (redactor is None and not stamp):
        return
    try:
        from opentelemetry._logs import _internal
    except ImportError:  # pragma: no cover - an API without logs
        return
    original = getattr(_internal, "_set_logger_provider", None)
    if not callable(original):
        warn_once(
            "config:logs-later",
            "sessiontrace: cannot watch for a LoggerProvider set after configure(); its log records will "
            "NOT be redacted nor carry the session: set it before configure(), or call "
            "install_log_redaction(redactor, provider)",
        )
        return

    def _set_logger_provider(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        try:
            if _log_redactor is not None:
                install_log_redaction(_log_redactor)
            if _log_stamping:
                _stamp_otel_logs()
        except Exception as error:  # never break the application's logging setup
            warn_once(
                "config:logs-later-failed",
                "sessiontrace: could not install log redaction and session stamping on the new "
                "LoggerProvider (%s: %s); its log records may be neither redacted nor stamped",
                type(error).__name__,
                error,
            )
        return result

    _internal._set_logger_provider = _set_logger_provider
    _log_hook_installed = True


def _redactor(redaction: bool | Redactor | None, read: _Reader) -> Redactor | None:
    if isinstance(redaction, Redactor):
        return redaction
    if not (read.flag("SESSIONTRACE_REDACT") if redaction is None else redaction):
        return None
    max_chars = read.parsed("SESSIONTRACE_REDACT_MAX_CHARS", _non_negative)
    return Redactor(
        deny_keys=(*DEFAULT_DENY_KEYS, *_split(read.text("SESSIONTRACE_REDACT_DENY_KEYS"))),
        allow_keys=(*DEFAULT_ALLOW_KEYS, *_split(read.text("SESSIONTRACE_REDACT_ALLOW_KEYS"))),
        max_value_chars=max_chars or None,
    )


def _non_negative(value: str) -> int:
    number = int(value)
    if number < 0:
        raise ValueError(f"must be 0 or more, got {number}")
    return number


def _instrument_threads() -> None:
    from opentelemetry.instrumentation.threading import ThreadingInstrumentor

    instrumentor = ThreadingInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument()
    _carry_context_into_thread_subclasses()


# The contrib instrumentor captures the context in ``Thread.start`` (inherited by subclasses) but
# attaches it only in ``Thread.run`` / ``Timer.run``: a subclass overriding ``run()``, the usual
# way to subclass, would run without the session. ``_bootstrap_inner`` (CPython's, since 3.0) is
# what calls ``run()`` in the new thread, whatever class defines it.
_CONTRIB_WRAPPED_RUN = (threading.Thread, threading.Timer)
_CONTRIB_CONTEXT_ATTRIBUTE = "_otel_context"  # set by the contrib instrumentor's Thread.start wrapper
_thread_subclasses_carried = False


def _carry_context_into_thread_subclasses() -> None:
    global _thread_subclasses_carried
    if _thread_subclasses_carried or not hasattr(threading.Thread, "_bootstrap_inner"):
        return
    from wrapt import wrap_function_wrapper

    wrap_function_wrapper(threading.Thread, "_bootstrap_inner", _run_subclass_in_started_context)
    _thread_subclasses_carried = True


def _run_subclass_in_started_context(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    """Attach the context captured at ``start()`` around a subclass's own ``run()``. Keyed on
    the contrib instrumentor's capture, so after its ``uninstrument()`` nothing is attached here."""
    context = getattr(instance, _CONTRIB_CONTEXT_ATTRIBUTE, None)
    if context is None or _run_attaches_context(type(instance)):
        return wrapped(*args, **kwargs)
    token = otel_context.attach(context)
    try:
        return wrapped(*args, **kwargs)
    finally:
        otel_context.detach(token)


def _run_attaches_context(thread_class: type) -> bool:
    """Whether the ``run`` this class uses is one the contrib instrumentor wraps (attaching the
    context itself: attaching it here too would be redundant)."""
    owner = next((cls for cls in thread_class.__mro__ if "run" in vars(cls)), None)
    return owner in _CONTRIB_WRAPPED_RUN


def _store_path(env: Mapping[str, str]) -> Path:
    if env.get("SESSIONTRACE_STORE"):
        return Path(env["SESSIONTRACE_STORE"]).expanduser()
    from sessiontrace.store import default_store_path

    return default_store_path()


def _split(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


class _Reader:
    """Reads and validates environment variables, naming the variable in every error."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def text(self, name: str, default: str | None = None) -> str:
        value = self.env.get(name)
        return (default if default is not None else _DEFAULTS.get(name, "")) if value is None else value.strip()

    def flag(self, name: str, default: str | None = None) -> bool:
        value = self.text(name, default).lower()
        if value in ("1", "true", "yes", "on"):
            return True
        if value in ("", "0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name} must be true or false, got {value!r}")

    def choice(self, name: str, choices: tuple[str, ...]) -> Any:
        value = self.text(name).lower()
        if value not in choices:
            raise ConfigError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
        return value

    def parsed(self, name: str, parse: Callable[[str], Any]) -> Any:
        value = self.text(name)
        try:
            return parse(value)
        except (ValueError, ipaddress.AddressValueError) as error:
            raise ConfigError(f"{name}: {error}") from None
