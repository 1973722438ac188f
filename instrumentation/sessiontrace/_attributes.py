"""The SDK's attribute container, used directly where the values are already valid.

``BoundedAttributes`` validates every value it is given and serves every read through the Mapping
ABC under a lock: about a microsecond per attribute, on the hottest paths of this library (every
span's stamping, redaction and export, every workflow step). These helpers use the dict inside it
when that is safe: the container is the SDK's own type, no limit can bite, and the values are ones
we validated ourselves or read from an ended span, whose attributes can no longer change. Anything
else takes the public API. This module is the one place that knows the container's private fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeGuard

from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.trace import Span


def frozen(attributes: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """The dict inside an ended span's (or an event's, a link's) attributes, to read without a
    copy or a lock; None when they are not a frozen ``BoundedAttributes``."""
    if type(attributes) is BoundedAttributes and attributes._immutable:
        return attributes._dict
    return None


def has_room(attributes: object, count: int) -> TypeGuard[BoundedAttributes]:
    """Whether a live span's ``attributes`` are the SDK's container with room for ``count`` more."""
    return (
        type(attributes) is BoundedAttributes
        and not attributes._immutable
        and (attributes.maxlen is None or len(attributes._dict) + count <= attributes.maxlen)
    )


_SDK_SPAN_TYPES: set[type] = set()
"""Types known to be the SDK's span (or a subclass): a set lookup instead of an ABC check per span."""


def is_sdk_span(span: object) -> TypeGuard[Span]:
    """Whether ``span`` is the SDK's span (or a subclass), whose private fields these helpers use."""
    kind = type(span)
    if kind in _SDK_SPAN_TYPES:
        return True
    # On the type, as cached (isinstance would follow a proxy's __class__); an ABC check, once per type.
    if issubclass(kind, Span):
        _SDK_SPAN_TYPES.add(kind)
        return True
    return False


def add(span: Any, values: Mapping[str, Any], *, longest: int | None = None, replace: bool) -> bool:
    """Put ``values`` (valid attribute values the SDK would store as they are: str, bool, int or
    float, or tuples of them) into a live SDK span's attributes, overwriting existing keys only if
    ``replace``. ``longest``: the length of their longest string, when known (else it is measured,
    and only if a value length limit is set). False, having changed nothing, when that is not safe:
    not an SDK span with the SDK's container, already ended, no room for all of them, or a value
    length limit below their longest string."""
    if type(span) not in _SDK_SPAN_TYPES and not is_sdk_span(span):  # the common case without a call
        return False
    attributes = span._attributes
    if type(attributes) is not BoundedAttributes or attributes._immutable:
        return False
    limit = attributes.max_value_len
    if limit is not None and limit < (longest if longest is not None else _longest_string(values)):
        return False
    # The span's lock, as the SDK's own setters take it: end() freezes the container under it, and
    # an exporter reading an ended span must never see it change.
    with span._lock:
        return add_holding_lock(span, values, replace=replace)


def add_holding_lock(span: Span, values: Mapping[str, Any], *, replace: bool) -> bool:
    """``add`` for a caller that holds the SDK span's lock and knows no value length limit can cut
    ``values``. False, having changed nothing, when the span has ended or has no room for them."""
    attributes = span._attributes
    if type(attributes) is not BoundedAttributes or span._end_time is not None:
        return False
    with attributes._lock:
        store = attributes._dict
        if attributes.maxlen is not None and len(store) + len(values) > attributes.maxlen:
            return False
        if replace or store.keys().isdisjoint(values):  # the common case, in one call
            store.update(values)
        else:
            for key, value in values.items():
                if key not in store:
                    store[key] = value
    return True


def _longest_string(values: Mapping[str, Any]) -> int:
    """The length of the longest string among ``values``, those in tuples included."""
    longest = 0
    for value in values.values():
        for item in value if isinstance(value, tuple) else (value,):
            if isinstance(item, str):
                longest = max(longest, len(item))
    return longest


def frozen_like(original: Any, values: dict[str, Any]) -> Any:
    """``values`` in a frozen container like ``original`` (its limits and dropped count kept), or
    ``values`` itself when ``original`` is a plain mapping. ``values`` are ``original``'s own with
    some strings replaced (redacted), so they are validated again only where a value length limit
    could cut a replacement."""
    if not isinstance(original, BoundedAttributes):
        return values
    extended = getattr(original, "_extended_attributes", False)  # log records: nested maps
    if type(original) is BoundedAttributes and original.max_value_len is None:
        copy = BoundedAttributes(maxlen=original.maxlen, immutable=True, extended_attributes=extended)
        copy._dict.update(values)  # at most as many keys as the original had: within maxlen
    else:
        copy = BoundedAttributes(
            maxlen=original.maxlen,
            attributes=values,
            max_value_len=original.max_value_len,
            extended_attributes=extended,
        )
    copy.dropped += original.dropped
    return copy
