"""Built-in detectors: the shapes of personal data and secrets we find in free text.

Speed is the design constraint: every string of every span goes through ``scan()``. A pattern
like ``\\b[\\w.]+@...`` makes CPython's ``re`` try the full engine at every character, which costs
milliseconds on a 4 KB prompt. So every shape here is written to start *after* one "trigger"
character that is rare in prose (the first digit of a number, ``@``, the backslash of its JSON
escape ``\\u0040``, ``:``, ``=``, ``_``, ``-``, the ``J`` of ``eyJ``, the ``K`` of ``AKIA``...), and
the one combined pattern begins with the class of all triggers: the engine then skips ordinary
prose in C (about 5 ns a character) and tries the shapes only where a trigger occurs. Each shape
checks the trigger it follows with a lookbehind; the part of a value that lies *before* its trigger
(an email's local part, an IBAN's country code, the ``+`` of a phone number) is found by the
shape's validator.

Characters that stand for ASCII ones in numbers and addresses (full-width digits, at sign and full
stop, no-break and ideographic spaces, Unicode hyphens) are folded to them first, one for one
(``fold()``): every shape is written for ASCII, and a value found in the folded text is at the same
place in the original. JSON escapes (``\\u0040``) are not one for one: the email shape reads them.

A regular expression only proposes candidates. Validation in Python decides: the Luhn checksum
for card numbers, ISO 7064 mod 97 for IBANs, the assignment rules for SSNs and National
Insurance numbers, digit counts for phone numbers, the key name for ``password=...``. A candidate
that fails is left as it is, and the other shapes are tried at the same place.

Long strings (a captured prompt) do not pay for even that one pass: CPython's ``re`` needs about
5 ns a character just to look for a trigger, and far more at each one (JSON is full of ``:`` and
digits). When the ``hyperscan`` package is importable, one hyperscan pass (a multi-pattern
automaton, in C) lists the only places where a shape *can* start: an ``@`` or ``\\u0040``,
an ``eyJ``, an API key prefix, a secret word followed by ``:`` or ``=``, a number whose next 8
characters are digits or separators, a number after two capitals. The combined pattern is then
tried at those places alone, in order, exactly as ``search()`` would have met them: every place
where the pattern can match is in the list (the list may hold more), so the result is the same
as the pure ``re`` scan, which remains the path for short strings and the fallback for anything
hyperscan cannot take. Short strings found clean are remembered (only clean ones: no personal
data is kept), since span attributes repeat (routes, model names, statuses).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from sessiontrace._log import warn_once

try:  # the fast candidate finder; without it every string takes the pure ``re`` path, same results
    import hyperscan
except ImportError:  # pragma: no cover - a platform without a wheel
    hyperscan = None  # type: ignore[assignment]

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

_JSON_ESCAPES: Final = frozenset("nrt")
"""The letters of the JSON escapes ``\\n``, ``\\r``, ``\\t``: captured content is JSON text, where a
line break is a backslash and an ``n``. After a backslash they separate, like the blank they stand for."""


def _after_word(text: str, index: int) -> bool:
    """Whether ``text[index]`` continues a word (a JSON escape such as ``\\n`` does not)."""
    if index == 0 or text[index - 1] not in _WORD:
        return False
    return not (text[index - 1] in _JSON_ESCAPES and index > 1 and text[index - 2] == "\\")


_DOUBLED: Final = (0, 2, 4, 6, 8, 1, 3, 5, 7, 9)
"""Luhn: a doubled digit, with the digits of the product summed."""


_DIGIT_VALUE: Final = {str(digit): digit for digit in range(10)}
_DOUBLED_VALUE: Final = {str(digit): _DOUBLED[digit] for digit in range(10)}


def luhn(digits: str) -> bool:
    """The Luhn (mod 10) checksum of payment card numbers."""
    try:  # ASCII digits, the case of every candidate: table look-ups in C
        odd = sum(map(_DIGIT_VALUE.__getitem__, digits[-1::-2]))
        total = odd + sum(map(_DOUBLED_VALUE.__getitem__, digits[-2::-2]))
    except KeyError:  # other Unicode digits, as int() reads them (or its ValueError)
        total = sum(map(int, digits[-1::-2])) + sum(_DOUBLED[int(d)] for d in digits[-2::-2])
    return total % 10 == 0


def iban_checksum(iban: str) -> bool:
    """ISO 13616 / ISO 7064 mod 97-10: move the first four characters to the end, letters to
    numbers (A=10 ... Z=35); a valid IBAN leaves remainder 1."""
    rearranged = iban[4:] + iban[:4]
    try:
        return int("".join(str(int(char, 36)) for char in rearranged)) % 97 == 1
    except ValueError:
        return False


_SEPARATORS: Final = str.maketrans("", "", " .-()+/")
_CARD_SEPARATORS: Final = frozenset(" -")


def _digits(text: str) -> str:
    return text.translate(_SEPARATORS)  # the regexes allow no other character between digits


def _is_card(digits: str) -> bool:
    # Issuer prefixes 2-6 (Mastercard 2-series, Amex/Diners/JCB, Visa, Mastercard, Discover/UnionPay/
    # Maestro) keep epoch-millisecond timestamps and other long numbers starting 1, 7, 8, 9 or 0 out.
    return 13 <= len(digits) <= 19 and digits[0] in "23456" and luhn(digits)


_DOTTED_CARD: Final = re.compile(
    r"[0-9]{4}(?:\.[0-9]{4}){3}(?:\.[0-9]{1,3})?"  # 4.4.4.4, and the tail of a 17-19 digit card
    r"|[0-9]{4}\.[0-9]{6}\.[0-9]{4,5}"  # Amex 4.6.5, Diners 4.6.4
)
"""Dots separate a card's digits only in its printed groups: a decimal (3.141592653589793) or
thousands separated by dots is no card, whatever its checksum."""


def _is_card_run(run: str) -> bool:
    return ("." not in run or _DOTTED_CARD.fullmatch(run) is not None) and _is_card(_digits(run))


def _card(text: str, start: int, end: int) -> int | tuple[int, int] | None:
    if _is_card_run(text[start:end]):
        return start
    # The run may hold a card and more digits after a separator (an expiry, a CVV): its pieces
    # that end at a separator, longest first. (Digits before the card are another start: the
    # scan resumes at the run's next separator.)
    for stop in range(end - 1, start, -1):
        if text[stop] in _CARD_SEPARATORS and _is_card_run(text[start:stop]):
            return start, stop
    return None


_SSN_CUE: Final = re.compile(r"(?<![a-z])(?:ssn|ss ?#|social security|soc\. ?sec)", re.IGNORECASE)
_SSN_CUE_CHARS: Final = 32
"""How far before a spaced SSN its cue may be: ``SSN: ``, ``my social security number is ``."""


def _ssn(text: str, start: int, end: int) -> int | None:
    area, group, serial = text[start:end].replace(" ", "-").split("-")
    # SSA rules: no area 000, 666 or 9xx, no group 00, no serial 0000.
    if area in ("000", "666") or area[0] == "9" or group == "00" or serial == "0000":
        return None
    # Spaced, three numbers are as likely scores or quantities: an SSN only where the text says so.
    if text[start + 3] == " " and _SSN_CUE.search(text, max(0, start - _SSN_CUE_CHARS), start) is None:
        return None
    return start


_LAST_WORD: Final = re.compile(r"([^\W\d_]+)[\s.:#-]*\Z")
"""The last word of a (lower-cased) text, and the punctuation after it: ``rechnungs-nr. ``."""
_REFERENCE_WORDS: Final = frozenset(
    {"rechnung", "invoice", "bestellung", "order", "auftrag", "ref", "referenz", "reference", "aktenzeichen"}
    | {"vorgang", "ticket", "vertrag", "contract", "beleg", "lieferschein", "kundennr", "kundennummer"}
)
"""Words that name a reference number by themselves: ``Rechnung 0815/123456``."""
_REFERENCE_STEMS: Final = (
    *("rechnung", "invoice", "bestell", "order", "auftrag", "ref", "akten", "vorgang", "ticket"),
    *("vertrag", "contract", "beleg", "lieferschein", "kunden"),
)
"""The first part of a compound that names one when it ends in a number word (``Bestellnummer``),
or stands before ``Nr.`` (``Rechnungs-Nr.``)."""
_NUMBER_WORDS: Final = ("nummer", "number", "nr", "no")
_PHONE_PARTS: Final = (
    *("fon", "phone", "fax", "mobil", "handy", "ruf", "call", "hotline", "line", "service"),
    *("durchwahl", "kontakt", "contact", "festnetz", "privat"),
)
"""Any word holding one of these names a phone (``Bestelltelefon``, ``Ticketservice``, ``Orderline``),
whatever else it holds; so does ``Tel``, as a word (``bestellnummer`` holds "tel" too)."""
_CUE_CHARS: Final = 40
"""How much text before a number is read for the word that names it."""


def _names_a_reference(text: str, start: int) -> bool:
    """Whether the word before the number at ``start`` names an invoice, order or other reference:
    ``Rechnung``, ``Bestellnummer``, or ``Nr.``/``No.`` after such a word (``Invoice No.``). A word
    that may name a phone (``Bestellhotline``), a bare ``Nr.`` or anything else does not: when in
    doubt the number is redacted."""
    window = text[max(0, start - _CUE_CHARS) : start].lower()
    last = _LAST_WORD.search(window)
    if last is None:
        return False
    word = last.group(1)
    if word in _NUMBER_WORDS:
        named = _LAST_WORD.search(window, 0, last.start())
        return named is not None and _no_phone(named.group(1)) and named.group(1).startswith(_REFERENCE_STEMS)
    if not _no_phone(word):
        return False
    return word in _REFERENCE_WORDS or (word.startswith(_REFERENCE_STEMS) and word.endswith(_NUMBER_WORDS))


def _no_phone(word: str) -> bool:
    return word != "tel" and not any(part in word for part in _PHONE_PARTS)


def _phone(text: str, start: int, end: int) -> int | None:
    digits = _digits(text[start:end])
    before = text[start - 1] if start else ""
    if before == "+":
        return start - 1 if 8 <= len(digits) <= 15 else None  # E.164: at most 15 digits
    # Nothing in 0815/123456 tells a reference number from a phone number with a German area code
    # (0821/123456 is Augsburg): the word before it does.
    if "/" in text[start:end] and _names_a_reference(text, start):
        return None
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
    if begin < 0 or _after_word(text, begin):
        return None
    iban = text[begin:end].replace(" ", "")
    return begin if 15 <= len(iban) <= 34 and iban_checksum(iban) else None


_NINO_INVALID_PREFIXES: Final = frozenset({"BG", "GB", "KN", "NK", "NT", "TN", "ZZ"})
_NINO_FIRST: Final = frozenset("ABCEGHJKLMNOPRSTWXYZ")  # not D, F, I, Q, U, V
_NINO_SECOND: Final = frozenset("ABCEGHJKLMNPRSTWXYZ")  # nor O


def _nino(text: str, start: int, end: int) -> int | None:
    begin = start - 3 if text[start - 1 : start] == " " else start - 2
    if begin < 0 or _after_word(text, begin):
        return None
    prefix = text[begin : begin + 2]
    if prefix[0] in _NINO_FIRST and prefix[1] in _NINO_SECOND and prefix not in _NINO_INVALID_PREFIXES:
        return begin
    return None


_MARKS: Final = (
    "\u0300-\u036f"  # combining diacritics: a decomposed é is e and U+0301
    "\u0483-\u0489\u0591-\u05c7\u0610-\u061a\u064b-\u065f\u0670\u06d6-\u06ed"  # Cyrillic, Hebrew, Arabic
    "\u0900-\u0dff\u0e00-\u0eff\u0f00-\u0fff\u1000-\u109f\u1780-\u17ff"  # Indic to Sinhala, Thai to Khmer
    "\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f"  # combining extensions and supplements
    "\u3099\u309a"  # kana voicing marks (a decomposed が)
)
"""Combining marks (in a character class), which ``\\w`` lacks though they belong to the word they
are in: the vowel signs of Indic and Southeast Asian scripts (their blocks whole), accents."""

_LOCAL_PART_REVERSED: Final = re.compile(rf"[\w{_MARKS}.%+'-]{{1,64}}(?:(?<=[eE]200u)\\[\w{_MARKS}.%+'-]*)*")
"""A local part read backwards; a dot may be JSON-escaped (``\\u002e``, reversed ``e200u\\``)."""

_CJK: Final = (
    "\u3040-\u30ff\u3130-\u318f\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af"  # kana, jamo, ideographs, hangul
    "\uf900-\ufaff\uff66-\uff9f\U00020000-\U0002fa1f"  # compatibility ideographs, half-width kana
)
"""The scripts written without spaces between words (in a character class)."""
_CJK_CHAR: Final = re.compile(f"[{_CJK}]")

_LABEL: Final = rf"(?:[^\W_]|[{_MARKS}-])"
"""One character of a domain label, in any script: a letter, digit, mark or hyphen."""
_DOT: Final = r"(?:\.|\\u002[eE])"
"""A dot between labels, or its JSON escape."""
_TLD: Final = (
    rf"(?:[A-Za-z]{{2,24}}(?=[{_CJK}])"  # an ASCII one with CJK prose glued after it: ends there
    r"|[xX][nN]--[A-Za-z0-9-]{1,59}(?![\w-])"  # punycode (xn--p1ai)
    rf"|(?:[^\W\d_]|[{_MARKS}]){{2,24}}(?![\w{_MARKS}-]))"  # letters in any script
)
"""The top-level domain. Letters only, or punycode: pkg@1.0.rc1 is a version."""


def _email(text: str, start: int, end: int) -> int | None:
    # The local part, before the "@" trigger: matched on the reversed 64 characters before it.
    before = text[start - 1 :: -1] if start <= 64 else text[start - 1 : start - 65 : -1]
    local = _LOCAL_PART_REVERSED.match(before)
    if local is None:
        return None
    begin = start - local.end()
    # CJK prose has no spaces: a local part that leaves CJK for another script starts where it does
    # (请联系alice@...). One in a CJK script throughout is taken whole (用户@例子.中国).
    cjk = None if before.isascii() else _CJK_CHAR.search(before, 0, local.end())
    if cjk is not None and cjk.start():
        begin = start - cjk.start()
    if begin and text[begin - 1] == "\\" and text[begin] in _JSON_ESCAPES:
        begin += 1  # "\\nbob@example.com" in JSON text: the address starts after the line break
    while begin < start and text[begin] in ".'":  # o'brien@, not 'bob@ of a quoted address
        begin += 1
    return begin if begin < start else None


def _jwt(text: str, start: int, end: int) -> int | None:
    return start - 2  # the trigger is the "J" of the header's "eyJ"


_API_KEY_PREFIX: Final = re.compile(r"sk-|[sr]k_(?:live|test)_|AKIA|ASIA|gh[pousr]_|github_pat_|xox[abposr]-|AIza")


def _api_key(text: str, start: int, end: int) -> int | None:
    begin = _extend_left(text, start, _LETTERS, 10)  # "sk" before "-", "ghp" before "_", "AI" before "za"
    if begin and text[begin - 1] == "\\" and text[begin] in _JSON_ESCAPES:
        begin += 1  # after a JSON escape: "\\nsk-..."
    elif begin and text[begin - 1] in _BASE64URL:
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
_SECRET_SKIPPED: Final = " \t\"'\\"
"""Blanks and quotes around a key and its value; a backslash too: ``\\"password\\": \\"...\\"`` in JSON text."""


def _secret(text: str, start: int, end: int) -> int | None:
    # The trigger is the ":" or "=" of an assignment; the key is the name just before it.
    key_end = start
    while key_end and text[key_end - 1] in _SECRET_SKIPPED:
        key_end -= 1
    if not text[max(0, key_end - _LONGEST_SECRET_WORD) : key_end].lower().endswith(_SECRET_WORDS):
        return None
    value = start + 1
    while text[value] in _SECRET_SKIPPED:  # the value, not its quotes (JSON-escaped too) or padding
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
    validate: Callable[[str, int, int], int | tuple[int, int] | None]
    """Given the text and the span of the whole match (trigger included), the start of the value
    to redact (it ends where the match does), its (start, end) when it is a shorter piece of the
    match, or None to keep the candidate as it is."""
    number: bool = False
    """A run of digits: when it fails validation, the scan resumes after it (the groups of an IBAN
    that fails mod 97 are not a phone number)..."""
    split: bool = False
    """... or, for this shape, at the run's next separator: in ``2 4111 1111 1111 1111`` the card
    run starts at the quantity ``2``, and fails."""


_CAP_MARKER: Final = r"(?:…|\\u2026)\[truncated "
"""The start of the marker that ends a cut value (ours and captured content's), its "…" JSON-escaped too."""
_DIGITS: Final = "0-9"
_JSON_ESCAPE: Final = r"(?<=\\[nrt])"
"""After a JSON escape (``\\n``...): a separator, though its letter is a word character."""
_ASCII_WORD: Final = "A-Za-z0-9_"
"""What a number must not continue (in a character class): an ASCII word. Not ``\\w``: CJK text
has no spaces, and a number there starts right after a kana or an ideograph."""
_AFTER_SEPARATOR: Final = rf"(?<=(?:(?<![{_ASCII_WORD}.-])|{_JSON_ESCAPE})[0-9])"
"""The digit trigger does not continue a word, a decimal or a dashed id (UUID groups)."""

SHAPES: Final = (
    _Shape(
        "email",
        "@\\\\",
        # Domain labels and the top-level domain in any script (internationalised: exämple.com,
        # 例子.中国, डाटा.भारत). Labels hold no underscore (foo@my_module.py is no address). In JSON
        # text the "@" and the dots may be escaped (alice\u0040example\u002ecom): the trigger is then
        # the backslash, and the marker replaces the escapes with the rest.
        rf"(?:(?<=[\w{_MARKS}%+-]@)|(?<=[\w{_MARKS}%+-]\\)u0040)"
        rf"{_LABEL}{{1,63}}(?:{_DOT}{_LABEL}{{1,63}}){{0,8}}{_DOT}{_TLD}",
        _email,
    ),
    _Shape(
        "jwt",
        "J",
        # header.payload.signature; the signature and the payload's end may be missing: a size cap
        # before ours cut the token, and the claims before the cut are still personal data. A cap
        # may even cut the header: then what is left of it ends the value or meets the cap's marker,
        # and 16 characters or more after "eyJ" keep short words (eyJohn) out.
        rf"(?<=(?:(?<![\w-])|{_JSON_ESCAPE})eyJ)(?:[\w-]{{7,}}\.eyJ[\w-]*(?:\.[\w-]*)?(?![\w-])"
        rf"|[A-Za-z0-9_-]{{16,}}(?:\.(?:ey?)?)?(?={_CAP_MARKER}|\Z))",
        _jwt,
    ),
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
        # In JSON text the quotes are escaped (\"), and an escape ends the value (\" \n), but an
        # escaped backslash (\\) is part of it.
        r"(?<=[\w\"' \t][:=])(?!//)[ \t]{0,3}(?:\\?[\"'])?(?:(?:Bearer|Basic|Token)[ ]+)?"
        r"(?:[^\s\"'&,;<>\\]|\\\\|\\(?![\"nrt])){6,}",
        _secret,
    ),
    _Shape(
        "card",
        _DIGITS,
        # 13-19 digits, grouped by blanks, dashes or dots (_card checks where the dots are)
        _AFTER_SEPARATOR + rf"(?:[ .-]?[0-9]){{12,18}}(?![{_ASCII_WORD}-])",
        _card,
        number=True,
        split=True,
    ),
    _Shape(
        "ssn",
        _DIGITS,
        # 123-45-6789, or 123 45 6789 standing alone (not three numbers of a longer row) after a cue
        # word (SSN, social security: see _ssn)
        _AFTER_SEPARATOR
        + rf"[0-9]{{2}}(?:-[0-9]{{2}}-[0-9]{{4}}|(?<![0-9] [0-9]{{3}}) [0-9]{{2}} [0-9]{{4}}(?! [0-9]))"
        rf"(?![{_ASCII_WORD}-])",
        _ssn,
        number=True,
        split=True,
    ),
    _Shape(
        "phone",
        _DIGITS,
        # +44 20 7946 0958, +49 30/1234567 (8-15 digits); (415) 555-0132; 415-555-0132, 020 7946 0958
        # (10-11 digits, ending in 4: a date and time, 2024-01-15 10:30, is not a phone number);
        # 0171/1234567, 089/123 456 78 (a trunk 0, the area code, a slash and 5 digits or more: not
        # a date, 01/23/2024 or 06/2024 2500 rows, nor a path, /0171/1234567/, nor a reference a
        # word names, Rechnung 0815/123456: see _phone)
        rf"(?:(?<=(?:(?<![{_ASCII_WORD}+])|{_JSON_ESCAPE})\+[0-9])"
        r"(?=(?:[ .()/-]{0,2}[0-9]){7})"
        r"[0-9]{0,2}(?:[ .-]?\([0-9]{1,4}\))?(?:[ ./-]?[0-9]{2,8}){1,5}"
        rf"|(?<=(?:(?<![{_ASCII_WORD}])|{_JSON_ESCAPE})\([0-9])"
        r"[0-9]{0,3}\)[ .-]?[0-9]{2,4}(?:[ .-][0-9]{2,4}){1,3}"
        rf"|(?<=(?:(?<![{_ASCII_WORD}+(.-])|{_JSON_ESCAPE})[0-9])"
        r"(?=(?:[ .-]?[0-9]){9})[0-9]{0,3}(?:[ .-][0-9]{2,4}){0,3}[ .-][0-9]{4}"
        rf"|(?<=(?:(?<![{_ASCII_WORD}+(./-])|{_JSON_ESCAPE})0)"
        r"[0-9]{1,4}/(?!(?:19|20)[0-9]{2}(?![0-9]))(?=(?:[ .-]?[0-9]){5})[0-9]{2,8}(?:[ .-][0-9]{2,8}){0,3}(?!/))"
        rf"(?![{_ASCII_WORD}-]|\.[0-9])",
        _phone,
        number=True,
        split=True,
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
        return r"(?<=[0-9])(?:(?=[0-9 ()./-]{8})|(?<=[A-Z]{2}[0-9])|(?<=[A-Z]{2} [0-9]))"
    return f"(?<=[{trigger}])"


_NON_DIGIT: Final = re.compile("[^0-9]")

_LOOKALIKES: Final = {
    **{chr(0xFF10 + digit): str(digit) for digit in range(10)},  # FULLWIDTH DIGIT ZERO ... NINE
    "\uff0b": "+",  # FULLWIDTH PLUS SIGN
    "\uff08": "(",  # FULLWIDTH LEFT PARENTHESIS
    "\uff09": ")",  # FULLWIDTH RIGHT PARENTHESIS
    "\uff0d": "-",  # FULLWIDTH HYPHEN-MINUS
    "\u2010": "-",  # HYPHEN
    "\u2011": "-",  # NON-BREAKING HYPHEN
    "\u2012": "-",  # FIGURE DASH
    "\u00a0": " ",  # NO-BREAK SPACE
    "\u2007": " ",  # FIGURE SPACE
    "\u2009": " ",  # THIN SPACE
    "\u202f": " ",  # NARROW NO-BREAK SPACE
    "\u3000": " ",  # IDEOGRAPHIC SPACE
    "\uff20": "@",  # FULLWIDTH COMMERCIAL AT
    "\uff0e": ".",  # FULLWIDTH FULL STOP
}
"""Characters that stand for an ASCII digit, sign or blank in numbers, or for the ``@`` and dots of an
address: what CJK input methods type, what word processors and locales put between digit groups."""


def fold(text: str) -> str:
    """``text`` with its look-alikes made ASCII, one character for one: the detectors read the
    folded text, and a value found there is at the same place in the original."""
    if text.isascii():
        return text
    # One scan in C per look-alike (Latin-1 text cannot hold those above U+00FF: no scan at all).
    # str.translate costs ten times more: a dictionary look-up for every character.
    for lookalike, plain in _LOOKALIKES.items():
        if lookalike in text:
            text = text.replace(lookalike, plain)
    return text


_CLEAN_CACHE_CHARS: Final = 256
"""Strings up to this long that the detectors leave unchanged are remembered (and nothing else)."""
_CLEAN_CACHE_SIZE: Final = 4096
"""How many such strings; the set is emptied when full (a cheap bound for dynamic values)."""
FINDER_MIN_CHARS: Final = 256
"""From this length on, hyperscan lists the candidate places (below it, one ``re`` pass is cheaper
than the call)."""

_KELVIN: Final = "\u212a"
"""The one non-ASCII character whose lower case is an ASCII letter (``k``): the secret validator
lowers the key, hyperscan's caseless matching does not know it, so a text holding it takes the
``re`` path. (U+0130 lowers to ``i`` plus a combining dot, which ends no secret word.)"""

Engine = Literal["auto", "re"]
"""``auto``: hyperscan lists the candidates of long strings when it is installed; ``re``: never."""

FAST_ENGINE: Final = hyperscan is not None
"""Whether the hyperscan candidate finder is available in this process."""


# Candidate expressions, each written forwards (for reading and for the tests, which check the two
# forms agree) and backwards (what hyperscan runs, on the reversed text: it reports where matches
# end, and a match of the backward form ends where the forward one starts, so *every* start is
# reported, whatever the length; forwards, hyperscan would report each end with only its leftmost
# start). Each is a necessary condition of its shape's pattern at the trigger, which lies ``k``
# characters after the start: every place where a shape can match is reported. The text is
# prefixed with a space, so a number at its very start has a separator before it too.
_API_KEY_CANDIDATES: Final = (
    # (forward, backward, k)
    ("sk-", "-ks", 2),
    ("[sr]k_", "_k[sr]", 2),
    ("A[KS]IA", "AI[KS]A", 1),
    ("gh[pousr]_", "_[pousr]hg", 3),
    ("github_", "_buhtig", 6),
    ("xox[abposr]-", "-[abposr]xox", 4),
    ("AIz", "zIA", 2),
)
# Before a number: not a word character, but the letter of a JSON escape may be (``\\n4111...``).
_NUMBER_CANDIDATES: Final = {
    "card": (
        r"[^0-9A-Za-mo-qsu-z_.\-][0-9](?:[ .\-]?[0-9]){12}",
        r"(?:[0-9][ .\-]?){12}[0-9][^0-9A-Za-mo-qsu-z_.\-]",
        1,
    ),
    "ssn": (
        r"[^0-9A-Za-mo-qsu-z_.\-][0-9]{3}(?:-[0-9]{2}-| [0-9]{2} )[0-9]{4}",
        r"[0-9]{4}(?:-[0-9]{2}-| [0-9]{2} )[0-9]{3}[^0-9A-Za-mo-qsu-z_.\-]",
        1,
    ),
    "phone": (
        r"\+[0-9](?:[ .()/\-]{0,2}[0-9]){7}",
        r"(?:[0-9][ .()/\-]{0,2}){7}[0-9]\+",
        1,
    ),
    "phone /": (
        r"[^0-9A-Za-mo-qsu-z_+(./\-]0[0-9]{1,4}/(?:[ .\-]?[0-9]){5}",
        r"(?:[0-9][ .\-]?){5}/[0-9]{1,4}0[^0-9A-Za-mo-qsu-z_+(./\-]",
        1,
    ),
    "phone (": (
        r"\([0-9]{1,4}\)[ .\-]?[0-9]{2,4}[ .\-][0-9]{2,4}",
        r"[0-9]{2,4}[ .\-][0-9]{2,4}[ .\-]?\)[0-9]{1,4}\(",
        1,
    ),
    "phone plain": (
        r"[^0-9A-Za-mo-qsu-z_+(.\-][0-9]{1,4}(?:[ .\-][0-9]{2,4}){0,3}[ .\-][0-9]{4}",
        r"[0-9]{4}[ .\-](?:[0-9]{2,4}[ .\-]){0,3}[0-9]{1,4}[^0-9A-Za-mo-qsu-z_+(.\-]",
        1,
    ),
    "iban": (r"[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{4}){2}", r"(?:[A-Z0-9]{4} ?){2}[0-9]{2}[A-Z]{2}", 2),
    "nino": (r"[A-Z]{2}[0-9]{2}(?: ?[0-9]{2}){2} ?[A-D]", r"[A-D] ?(?:[0-9]{2} ?){2}[0-9]{2}[A-Z]{2}", 2),
    "nino spaced": (r"[A-Z]{2} [0-9]{2}(?: ?[0-9]{2}){2} ?[A-D]", r"[A-D] ?(?:[0-9]{2} ?){2}[0-9]{2} [A-Z]{2}", 3),
}
_SECRET_GAP: Final = "[ \t\"'\\\\]"
"""What the secret validator skips between a key and its ``=`` or ``:`` (quotes, blanks)."""
_SECRET_CANDIDATES: Final = (
    # A secret word, a gap of exactly ``gap`` characters, the assignment (the trigger, at the end:
    # k = the word and the gap); a longer gap with any key, which is rare, has an expression of its own.
    *(
        (
            re.escape(word) + _SECRET_GAP * gap + "[:=]",
            "[:=]" + _SECRET_GAP * gap + re.escape(word[::-1]),
            len(word) + gap,
        )
        for word in _SECRET_WORDS
        for gap in range(4)
    ),
    (_SECRET_GAP * 4 + "[:=]", "[:=]" + _SECRET_GAP * 4, 4),
)
"""The secret shape matches only where its validator finds a secret word before the gap: a match
it rejects is skipped by ``search()`` anyway (at the next character, with no other shape tried
there, as ``=`` and ``:`` trigger no other), so these need not cover one."""


def candidate_expressions(names: Iterable[str]) -> list[tuple[str, str, int]]:
    """(forward, backward, k) for the detectors ``names``; the secret words are matched caseless."""
    wanted = set(names)
    expressions: list[tuple[str, str, int]] = []
    if "email" in wanted:
        expressions += [("@", "@", 0), (r"\\u0040", r"0400u\\", 0)]  # the "@" or its JSON escape
    if "jwt" in wanted:
        expressions.append(("eyJ", "Jye", 2))
    if "api_key" in wanted:
        expressions += _API_KEY_CANDIDATES
    if "secret" in wanted:
        expressions += _SECRET_CANDIDATES
    for name, expression in _NUMBER_CANDIDATES.items():
        if name.split()[0] in wanted:
            expressions.append(expression)
    return expressions


def _on_match(k: int, start: int, end: int, flags: int, found: list[int]) -> None:
    # The expression id is k. In the reversed text, the match ends where the forward match starts;
    # this is the distance from the end of the text to the trigger: ``find`` makes it an index.
    found.append(end - k)


class _Finder:
    """The hyperscan database of candidate places; one scratch space per thread."""

    __slots__ = ("_database", "_local")

    def __init__(self, names: Iterable[str]) -> None:
        expressions = candidate_expressions(names)
        secret = {backward for _, backward, _ in _SECRET_CANDIDATES}
        self._database = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
        self._database.compile(
            expressions=[backward.encode() for _, backward, _ in expressions],
            ids=[k for _, _, k in expressions],
            elements=len(expressions),
            flags=[hyperscan.HS_FLAG_CASELESS if backward in secret else 0 for _, backward, _ in expressions],
        )
        self._local = threading.local()

    def find(self, text: str) -> list[int]:
        """Places where a shape may begin, in order (a superset of those where one does)."""
        scratch = getattr(self._local, "scratch", None)
        if scratch is None:
            scratch = self._local.scratch = hyperscan.Scratch(self._database)
        found: list[int] = []
        # One byte per character, so offsets are string indices (the triggers are all ASCII);
        # reversed, after a space put in front.
        data = text.encode("latin-1", "replace")[::-1] + b" "
        self._database.scan(data, _on_match, context=found, scratch=scratch)  # type: ignore[arg-type]
        found.sort(reverse=True)
        size = len(text)
        return [size - distance for distance in found]


_ESCAPED_AT: Final = "\\u0040"
"""An "@" escaped in JSON text: the email shape reads it, and triggers on its backslash."""
_ESCAPE_TRIGGER: Final = "\\\\"
"""The backslash in a trigger's character class."""


def _combined(shapes: Sequence[_Shape], *, escapes: bool) -> re.Pattern[str]:
    """One pattern for all ``shapes``, with the backslash of an escape as a trigger or without."""
    groups: dict[str, list[_Shape]] = {}
    for shape in sorted(shapes, key=lambda shape: shape.trigger != _DIGITS):  # most hits first
        trigger = shape.trigger if escapes else shape.trigger.replace(_ESCAPE_TRIGGER, "")
        groups.setdefault(trigger, []).append(shape)
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
    return re.compile(f"[{triggers}](?<![0-9]{{2}})(?:{'|'.join(branches)})")


class Scanner:
    """The enabled detectors compiled into one pattern. ``scan(text)`` returns the redacted text.

    ``engine="re"`` turns the hyperscan candidate finder off (the results are the same)."""

    __slots__ = ("_by_name", "_clean", "_escaped_pattern", "_finder", "_markers", "_pattern", "_shapes", "_singles")

    def __init__(self, names: Iterable[str] = DETECTORS, *, engine: Engine = "auto") -> None:
        wanted = set(names)
        unknown = wanted - set(DETECTORS)
        if unknown:
            raise ValueError(f"unknown detectors: {', '.join(sorted(unknown))}; known: {', '.join(DETECTORS)}")
        if engine not in ("auto", "re"):
            raise ValueError(f"unknown engine {engine!r}; known: auto, re")
        self._shapes = tuple(shape for shape in SHAPES if shape.name in wanted)
        self._by_name = {shape.name: shape for shape in self._shapes}
        self._markers = {shape.name: MARKER_FORMAT.format(shape.name) for shape in self._shapes}
        # The backslash of an escaped "@" is a trigger only in text that holds one: JSON text is full
        # of other backslashes (\", \n), and each would make the engine try the shapes there.
        self._pattern = _combined(self._shapes, escapes=False) if self._shapes else None
        self._escaped_pattern = _combined(self._shapes, escapes=True) if self._shapes else None
        # For a candidate that fails validation: the other shapes, tried alone at the same place.
        self._singles = tuple(
            (shape, re.compile(f"[{shape.trigger}](?<![0-9]{{2}}){_guard(shape.trigger)}(?:{shape.rest})"))
            for shape in self._shapes
        )
        self._finder = _Finder(self.detectors) if engine == "auto" and FAST_ENGINE and self._shapes else None
        self._clean: set[str] = set()

    @property
    def detectors(self) -> tuple[str, ...]:
        return tuple(shape.name for shape in self._shapes)

    @property
    def engine(self) -> str:
        """``hyperscan`` when long strings get their candidates from hyperscan, else ``re``."""
        return "re" if self._finder is None else "hyperscan"

    def scan(self, text: str) -> str:
        """``text`` with every validated match replaced by its marker (the same object if none)."""
        if self._pattern is None or len(text) < SHORTEST:
            return text
        if len(text) <= _CLEAN_CACHE_CHARS:
            clean = self._clean
            if text in clean:
                return text
            result = self._search(text, fold(text))
            if result is text:
                if len(clean) >= _CLEAN_CACHE_SIZE:
                    clean.clear()
                clean.add(text)
            return result
        folded = fold(text)
        finder = self._finder
        if finder is not None and len(text) >= FINDER_MIN_CHARS and (folded.isascii() or _KELVIN not in folded):
            try:
                candidates = finder.find(folded)
            except Exception as error:  # hyperscan could not scan it: the pure re path gives the same answer
                warn_once(
                    "redaction:hyperscan",
                    "sessiontrace: hyperscan failed (%s: %s); redacting with re alone, which is slower",
                    type(error).__name__,
                    error,
                )
                return self._search(text, folded)
            return self._at(text, folded, candidates)
        return self._search(text, folded)

    def scan_re(self, text: str) -> str:
        """``scan`` by the pure ``re`` path alone, uncached: the reference the fast paths must equal."""
        if self._pattern is None or len(text) < SHORTEST:
            return text
        return self._search(text, fold(text))

    def _search(self, text: str, folded: str) -> str:
        """The reference scan: ``search()`` from the start, then from after each value or miss. The
        detectors read ``folded``; the markers replace the values in ``text``."""
        pattern = self._escaped_pattern if _ESCAPED_AT in folded else self._pattern
        assert pattern is not None
        search = pattern.search
        match = search(folded)
        if match is None:
            return text
        pieces: list[str] = []
        kept = 0  # text[:kept] is already in pieces
        while match is not None:
            name, start, end = self._validate(folded, match)
            if not name:  # nothing there: look again from the next character, or further in a number
                match = search(folded, end)
                continue
            start = max(start, kept)
            pieces.append(text[kept:start])
            pieces.append(self._markers[name])
            kept = end
            match = search(folded, end)
        if not pieces:
            return text
        pieces.append(text[kept:])
        return "".join(pieces)

    def _at(self, text: str, folded: str, candidates: list[int]) -> str:
        """``_search`` with the pattern tried only at ``candidates`` (sorted): the same result, since
        ``search(folded, pos)`` is ``match()`` at the first place from ``pos`` where it succeeds, and
        every such place is a candidate."""
        pattern = self._escaped_pattern if _ESCAPED_AT in folded else self._pattern
        assert pattern is not None
        match_at = pattern.match
        pieces: list[str] = []
        kept = 0  # text[:kept] is already in pieces
        position = 0  # where search() would look from
        tried = -1
        for at in candidates:
            if at < position or at == tried:
                continue
            tried = at
            match = match_at(folded, at)
            if match is None:
                continue
            name, start, end = self._validate(folded, match)
            if not name:
                position = end
                continue
            start = max(start, kept)
            pieces.append(text[kept:start])
            pieces.append(self._markers[name])
            kept = position = end
        if not pieces:
            return text
        pieces.append(text[kept:])
        return "".join(pieces)

    def _validate(self, text: str, match: re.Match[str]) -> tuple[str, int, int]:
        """(detector, start, end) of the value the match stands for, trying the shapes after the one
        that matched at the same place when it fails validation; ("", match start, where to look
        again) if none: the next character, or for a number, after it or its next separator."""
        matched = match.lastgroup or ""
        at, end = match.span()
        shape = self._by_name[matched]
        value = shape.validate(text, at, end)
        if value is not None:
            return (matched, value, end) if isinstance(value, int) else (matched, *value)
        later = False
        for other, single in self._singles:
            if not later:
                later = other.name == matched
                continue
            candidate = single.match(text, at)
            if candidate is not None:
                stop = candidate.end()
                value = other.validate(text, at, stop)
                if value is not None:
                    return (other.name, value, stop) if isinstance(value, int) else (other.name, *value)
        if not shape.number:
            return "", at, at + 1
        if shape.split:
            separator = _NON_DIGIT.search(text, at + 1, end)
            if separator is not None:
                return "", at, separator.start()
        return "", at, end
