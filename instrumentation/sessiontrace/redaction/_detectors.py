"""Built-in detectors: the shapes of personal data and secrets we find in free text.

Speed is the design constraint: every string of every span goes through ``scan()``. A pattern
like ``\\b[\\w.]+@...`` makes CPython's ``re`` try the full engine at every character, which costs
milliseconds on a 4 KB prompt. So every shape here is written to start *after* one "trigger"
character that is rare in prose (the first digit of a number, ``@``, ``:``, ``=``, ``_``, ``-``,
the ``J`` of ``eyJ``, the ``K`` of ``AKIA``...), and the one combined pattern begins with the class
of all triggers: the engine then skips ordinary prose in C (about 5 ns a character) and tries the
shapes only where a trigger occurs. Each shape checks the trigger it follows with a lookbehind;
the part of a value that lies *before* its trigger (an email's local part, an IBAN's country
code, the ``+`` of a phone number) is found by the shape's validator.

A regular expression only proposes candidates. Validation in Python decides: the Luhn checksum
for card numbers, ISO 7064 mod 97 for IBANs, the assignment rules for SSNs and National
Insurance numbers, digit counts for phone numbers, the key name for ``password=...``. A candidate
that fails is left as it is, and the other shapes are tried at the same place.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

MARKER_FORMAT: Final = "[REDACTED:{}]"
"""What replaces a detected value: ``[REDACTED:email]``, ``[REDACTED:card]``..."""

_WORD: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")
_BASE64URL: Final = _WORD | frozenset("-")
_LETTERS: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _extend_left(text: str, index: int, allowed: frozenset[str], limit: int) -> int:
    """Smallest ``i`` such that ``text[i:index]`` is at most ``limit`` characters, all in ``allowed``."""
    stop = max(0, index - limit)
    while index > stop and text[index - 1] in allowed:
        index -= 1
    return index


# --- validators: (text, match start, match end) -> start of the value to redact, or None ---------------


_DOUBLED: Final = (0, 2, 4, 6, 8, 1, 3, 5, 7, 9)
"""Luhn: a doubled digit, with the digits of the product summed."""


def luhn(digits: str) -> bool:
    """The Luhn (mod 10) checksum of payment card numbers."""
    return (sum(map(int, digits[-1::-2])) + sum(_DOUBLED[int(d)] for d in digits[-2::-2])) % 10 == 0


def iban_checksum(iban: str) -> bool:
    """ISO 13616 / ISO 7064 mod 97-10: move the first four characters to the end, letters to
    numbers (A=10 ... Z=35); a valid IBAN leaves remainder 1."""
    rearranged = iban[4:] + iban[:4]
    try:
        return int("".join(str(int(char, 36)) for char in rearranged)) % 97 == 1
    except ValueError:
        return False


_SEPARATORS: Final = str.maketrans("", "", " .-()+")


def _digits(text: str) -> str:
    return text.translate(_SEPARATORS)  # the regexes allow no other character between digits


def _card(text: str, start: int, end: int) -> int | None:
    digits = _digits(text[start:end])
    # Issuer prefixes 2-6 (Mastercard 2-series, Amex/Diners/JCB, Visa, Mastercard, Discover/UnionPay/
    # Maestro) keep epoch-millisecond timestamps and other long numbers starting 1, 7, 8, 9 or 0 out.
    if 13 <= len(digits) <= 19 and digits[0] in "23456" and luhn(digits):
        return start
    return None


def _ssn(text: str, start: int, end: int) -> int | None:
    area, group, serial = text[start:end].split("-")
    # SSA rules: no area 000, 666 or 9xx, no group 00, no serial 0000.
    if area in ("000", "666") or area[0] == "9" or group == "00" or serial == "0000":
        return None
    return start


def _phone(text: str, start: int, end: int) -> int | None:
    digits = _digits(text[start:end])
    before = text[start - 1] if start else ""
    if before == "+":
        return start - 1 if 8 <= len(digits) <= 15 else None  # E.164: at most 15 digits
    if before == "(":
        start -= 1
    else:
        parts = text[start:end].split(".")
        if len(parts) == 4 and all(len(part) <= 3 for part in parts):
            return None  # an IPv4 address
    # Without a country code: a national trunk prefix 0 (10-11 digits), a NANP number (10 digits,
    # area code 2-9) or NANP with its country code 1 (11 digits).
    if digits[0] == "0":
        return start if 10 <= len(digits) <= 11 else None
    if digits[0] == "1":
        return start if len(digits) == 11 and digits[1] not in "01" else None
    return start if len(digits) == 10 else None


def _iban(text: str, start: int, end: int) -> int | None:
    begin = start - 2  # the shape starts after the country code
    if begin < 0 or (begin and text[begin - 1] in _WORD):
        return None
    iban = text[begin:end].replace(" ", "")
    return begin if 15 <= len(iban) <= 34 and iban_checksum(iban) else None


_NINO_INVALID_PREFIXES: Final = frozenset({"BG", "GB", "KN", "NK", "NT", "TN", "ZZ"})
_NINO_FIRST: Final = frozenset("ABCEGHJKLMNOPRSTWXYZ")  # not D, F, I, Q, U, V
_NINO_SECOND: Final = frozenset("ABCEGHJKLMNPRSTWXYZ")  # nor O


def _nino(text: str, start: int, end: int) -> int | None:
    begin = start - 3 if text[start - 1 : start] == " " else start - 2
    if begin < 0 or (begin and text[begin - 1] in _WORD):
        return None
    prefix = text[begin : begin + 2]
    if prefix[0] in _NINO_FIRST and prefix[1] in _NINO_SECOND and prefix not in _NINO_INVALID_PREFIXES:
        return begin
    return None


_LOCAL_PART_REVERSED: Final = re.compile(r"[\w.%+-]{1,64}")


def _email(text: str, start: int, end: int) -> int | None:
    # The local part, before the "@" trigger: matched on the reversed 64 characters before it.
    local = _LOCAL_PART_REVERSED.match(text[start - 1 :: -1] if start <= 64 else text[start - 1 : start - 65 : -1])
    if local is None:
        return None
    begin = start - local.end()
    while begin < start and text[begin] == ".":
        begin += 1
    return begin if begin < start else None


def _jwt(text: str, start: int, end: int) -> int | None:
    return start - 2  # the trigger is the "J" of the header's "eyJ"


_API_KEY_PREFIX: Final = re.compile(r"sk-|[sr]k_(?:live|test)_|AKIA|ASIA|gh[pousr]_|github_pat_|xox[abposr]-|AIza")


def _api_key(text: str, start: int, end: int) -> int | None:
    begin = _extend_left(text, start, _LETTERS, 10)  # "sk" before "-", "ghp" before "_", "AI" before "za"
    if begin and text[begin - 1] in _BASE64URL:
        return None
    return begin if _API_KEY_PREFIX.match(text, begin, end) else None


_SECRET_WORDS: Final = (
    "password",
    "passwd",
    "pwd",
    "passphrase",
    "secret",
    "token",
    "apikey",
    "api_key",
    "api-key",
    "access_key",
    "access-key",
    "private_key",
    "private-key",
    "credential",
    "credentials",
    "authorization",
    "auth",
)
"""A key whose name ends with one of these holds a secret: ``password``, ``db.password``,
``x-api-key``, ``access_token``, ``authToken``; not ``max_tokens`` or ``input_tokens``."""


_LONGEST_SECRET_WORD: Final = max(map(len, _SECRET_WORDS))


def _secret(text: str, start: int, end: int) -> int | None:
    # The trigger is the ":" or "=" of an assignment; the key is the name just before it.
    key_end = start
    while key_end and text[key_end - 1] in " \t\"'":
        key_end -= 1
    if not text[max(0, key_end - _LONGEST_SECRET_WORD) : key_end].lower().endswith(_SECRET_WORDS):
        return None
    value = start + 1
    while text[value] in " \t\"'":  # the value, not its quotes or padding
        value += 1
    return value


# --- the shapes ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Shape:
    name: str
    trigger: str
    """The character class (body) of the trigger; shapes with the same trigger share one guard."""
    rest: str
    """The pattern after the trigger character (lookbehinds may inspect it and what precedes it)."""
    validate: Callable[[str, int, int], int | None]
    """Given the text and the span of the whole match (trigger included), the start of the value
    to redact, or None to keep the candidate as it is."""
    number: bool = False
    """A run of digits: when it fails validation, none of its pieces is tried again (the groups
    of an IBAN that fails mod 97 are not a phone number)."""


_DIGITS: Final = "0-9"
_AFTER_SEPARATOR: Final = r"(?<=(?<![\w.-])[0-9])"
"""The digit trigger does not continue a word, a decimal or a dashed id (UUID groups)."""

SHAPES: Final = (
    _Shape(
        "email",
        "@",
        r"(?<=[\w%+-]@)[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63}){0,8}\.[A-Za-z]{2,24}(?![\w-])",
        _email,
    ),
    _Shape("jwt", "J", r"(?<=(?<![\w-])eyJ)[\w-]{7,}\.eyJ[\w-]{7,}\.[\w-]*(?![\w-])", _jwt),
    _Shape(
        "api_key",
        r"\-_KSz",
        r"(?:(?<=sk-)(?:proj-|ant-)?[\w-]{20,}"  # OpenAI, Anthropic
        r"|(?<=[sr]k_)(?:live|test)_[A-Za-z0-9]{16,}"  # Stripe
        r"|(?<=A[KS])IA[0-9A-Z]{16}"  # AWS access key ids
        r"|(?<=gh[pousr]_)[A-Za-z0-9]{30,}"  # GitHub tokens
        r"|(?<=github_)pat_\w{22,}"
        r"|(?<=xox[abposr]-)[A-Za-z0-9-]{10,}"  # Slack
        r"|(?<=AIz)a[\w-]{35})(?![\w-])",  # Google
        _api_key,
    ),
    _Shape(
        "secret",
        ":=",
        # 6 or more characters (a password can be short) after "key:", "key=", '"key": "', not "://";
        # a "Bearer" or "Basic" scheme is part of the value.
        r"(?<=[\w\"' \t][:=])(?!//)[ \t]{0,3}[\"']?(?:(?:Bearer|Basic|Token)[ ]+)?[^\s\"'&,;<>]{6,}",
        _secret,
    ),
    _Shape("card", _DIGITS, _AFTER_SEPARATOR + r"(?:[ -]?[0-9]){12,18}(?![\w-])", _card, number=True),
    _Shape("ssn", _DIGITS, _AFTER_SEPARATOR + r"[0-9]{2}-[0-9]{2}-[0-9]{4}(?![\w-])", _ssn, number=True),
    _Shape(
        "phone",
        _DIGITS,
        # +44 20 7946 0958 (8-15 digits); (415) 555-0132; 415-555-0132, 020 7946 0958 (10-11 digits,
        # ending in 4: a date and time, 2024-01-15 10:30, is not a phone number)
        r"(?:(?<=(?<![\w+])\+[0-9])(?=(?:[ .()-]{0,2}[0-9]){7})"
        r"[0-9]{0,2}(?:[ .-]?\([0-9]{1,4}\))?(?:[ .-]?[0-9]{2,8}){1,5}"
        r"|(?<=(?<!\w)\([0-9])[0-9]{0,3}\)[ .-]?[0-9]{2,4}(?:[ .-][0-9]{2,4}){1,3}"
        r"|(?<=(?<![\w+(.-])[0-9])(?=(?:[ .-]?[0-9]){9})[0-9]{0,3}(?:[ .-][0-9]{2,4}){0,3}[ .-][0-9]{4})"
        r"(?![\w-]|\.[0-9])",
        _phone,
        number=True,
    ),
    _Shape(
        "iban",
        _DIGITS,
        r"(?<=[A-Z]{2}[0-9])[0-9](?:[ ]?[A-Z0-9]{4}){2,7}(?:[ ]?[A-Z0-9]{1,3})?(?!\w)",
        _iban,
        number=True,
    ),
    _Shape(
        "nino",
        _DIGITS,
        r"(?:(?<=[A-Z]{2}[0-9])|(?<=[A-Z]{2} [0-9]))[0-9](?:[ ]?[0-9]{2}){2}[ ]?[A-D](?!\w)",
        _nino,
        number=True,
    ),
)
"""Every built-in detector, in the order they are tried at one place."""

DETECTORS: Final = tuple(shape.name for shape in SHAPES)
"""Names of the built-in detectors; the marker of each is ``[REDACTED:<name>]``."""

SHORTEST: Final = 6
"""No shape matches fewer characters (``a@b.io``); shorter strings are never scanned."""


def _guard(trigger: str) -> str:
    if trigger == _DIGITS:
        # A prefilter: only a number whose next 8 characters are digits or separators (SSN, card,
        # phone), or one after two capitals (IBAN, NINO), can be a shape. Dates, amounts and order
        # numbers in prose mostly fail here, in one fast single-character repeat of the regex
        # engine, without reaching the shapes or Python.
        return r"(?<=[0-9])(?:(?=[0-9 ().-]{8})|(?<=[A-Z]{2}[0-9])|(?<=[A-Z]{2} [0-9]))"
    return f"(?<=[{trigger}])"


class Scanner:
    """The enabled detectors compiled into one pattern. ``scan(text)`` returns the redacted text."""

    __slots__ = ("_by_name", "_markers", "_pattern", "_shapes", "_singles")

    def __init__(self, names: Iterable[str] = DETECTORS) -> None:
        wanted = set(names)
        unknown = wanted - set(DETECTORS)
        if unknown:
            raise ValueError(f"unknown detectors: {', '.join(sorted(unknown))}; known: {', '.join(DETECTORS)}")
        self._shapes = tuple(shape for shape in SHAPES if shape.name in wanted)
        self._by_name = {shape.name: shape for shape in self._shapes}
        self._markers = {shape.name: MARKER_FORMAT.format(shape.name) for shape in self._shapes}
        groups: dict[str, list[_Shape]] = {}
        for shape in sorted(self._shapes, key=lambda shape: shape.trigger != _DIGITS):  # most hits first
            groups.setdefault(shape.trigger, []).append(shape)
        triggers = "".join(groups)
        branches = [
            _guard(trigger) + "(?:" + "|".join(f"(?P<{shape.name}>{shape.rest})" for shape in shapes) + ")"
            for trigger, shapes in groups.items()
        ]
        if _DIGITS in groups and len(groups) > 1:
            # A digit that fails its guard then costs one more assertion, not one per other trigger.
            branches = [branches[0], "(?<![0-9])(?:" + "|".join(branches[1:]) + ")"]
        # One character class first: CPython's re then scans for trigger characters in C. Then one
        # assertion that rejects the second and later digits of a number, the commonest trigger:
        # every shape starts at the first digit of a number, or at a trigger that is not a digit.
        pattern = f"[{triggers}](?<![0-9]{{2}})(?:{'|'.join(branches)})"
        self._pattern = re.compile(pattern) if self._shapes else None
        # For a candidate that fails validation: the other shapes, tried alone at the same place.
        self._singles = tuple(
            (shape, re.compile(f"[{shape.trigger}](?<![0-9]{{2}}){_guard(shape.trigger)}(?:{shape.rest})"))
            for shape in self._shapes
        )

    @property
    def detectors(self) -> tuple[str, ...]:
        return tuple(shape.name for shape in self._shapes)

    def scan(self, text: str) -> str:
        """``text`` with every validated match replaced by its marker (the same object if none)."""
        pattern = self._pattern
        if pattern is None or len(text) < SHORTEST:
            return text
        search = pattern.search
        match = search(text)
        if match is None:
            return text
        pieces: list[str] = []
        kept = 0  # text[:kept] is already in pieces
        while match is not None:
            name, start, end = self._validate(text, match)
            if not name:  # nothing there: look again from the next character, or after a number
                match = search(text, end if self._by_name[match.lastgroup or ""].number else start + 1)
                continue
            start = max(start, kept)
            pieces.append(text[kept:start])
            pieces.append(self._markers[name])
            kept = end
            match = search(text, end)
        if not pieces:
            return text
        pieces.append(text[kept:])
        return "".join(pieces)

    def _validate(self, text: str, match: re.Match[str]) -> tuple[str, int, int]:
        """(detector, start, end) of the value the match stands for, trying the shapes after the one
        that matched at the same place when it fails validation; ("", match start, match end) if none."""
        matched = match.lastgroup or ""
        at, end = match.span()
        begin = self._by_name[matched].validate(text, at, end)
        if begin is not None:
            return matched, begin, end
        later = False
        for shape, single in self._singles:
            if not later:
                later = shape.name == matched
                continue
            candidate = single.match(text, at)
            if candidate is not None:
                stop = candidate.end()
                begin = shape.validate(text, at, stop)
                if begin is not None:
                    return shape.name, begin, stop
        return "", at, end
