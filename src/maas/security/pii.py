"""Find and redact personal data (PII) in text: patterns first, then validators.

Each kind has a precompiled candidate pattern and a validator that cuts false
positives (ID checksum and birth date, Luhn and issuer prefix, ``ipaddress``,
phone numbering-plan rules). Candidates from every kind are then resolved into
non-overlapping matches: the longest wins, and at equal length the more
specific kind (ID over bank card over mobile over phone).

Digit runs only match whole: a candidate may not touch a letter or digit on
either side, nor continue through ``.``/``-`` into one (``1.2.3.4.5``,
``2024-01-15``). The lookarounds use explicit ASCII classes, not ``\\b``, so
they work in Chinese text, which has no spaces: in ``手机13812345678谢谢`` the
CJK characters are boundaries. Full-width digits, letters and punctuation
(U+FF01-U+FF5E, as typed by Chinese input methods) are mapped one-to-one to
ASCII before matching, so offsets still index the original text.

Everything here is a pure function of its arguments except that a birth date
must not lie in the future, which reads today's date.
"""

from __future__ import annotations

import bisect
import ipaddress
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from enum import StrEnum
from typing import Literal, cast, get_args

from maas.errors import InvalidRequestError


class PiiKind(StrEnum):
    CN_ID = "cn_id"
    BANK_CARD = "bank_card"
    CN_MOBILE = "cn_mobile"
    PHONE = "phone"
    EMAIL = "email"
    IPV4 = "ipv4"
    IPV6 = "ipv6"


ALL_KINDS: frozenset[PiiKind] = frozenset(PiiKind)

PLACEHOLDERS: Mapping[PiiKind, str] = {
    PiiKind.CN_ID: "[ID]",
    PiiKind.BANK_CARD: "[BANK_CARD]",
    PiiKind.CN_MOBILE: "[PHONE]",
    PiiKind.PHONE: "[PHONE]",
    PiiKind.EMAIL: "[EMAIL]",
    PiiKind.IPV4: "[IP]",
    PiiKind.IPV6: "[IP]",
}

# Tie-break between candidates of equal length: higher is more specific.
_PRIORITY: Mapping[PiiKind, int] = {
    PiiKind.CN_ID: 70,
    PiiKind.BANK_CARD: 60,
    PiiKind.CN_MOBILE: 50,
    PiiKind.PHONE: 40,
    PiiKind.EMAIL: 30,
    PiiKind.IPV6: 20,
    PiiKind.IPV4: 10,
}


@dataclass(frozen=True, slots=True)
class PiiMatch:
    """One finding; ``start``/``end`` index the original text (``text[start:end]``)."""

    kind: PiiKind
    start: int
    end: int
    text: str


@dataclass(frozen=True, slots=True)
class RedactionResult:
    text: str
    matches: tuple[PiiMatch, ...] = ()
    counts: Mapping[PiiKind, int] = field(default_factory=dict)


class PiiBlockedError(InvalidRequestError):
    """A ``block`` policy met personal data. The message names kinds, never values."""

    code = "pii_blocked"

    def __init__(self, kinds: Iterable[PiiKind], *, where: Literal["input", "output"]) -> None:
        self.kinds: tuple[PiiKind, ...] = tuple(sorted(set(kinds)))
        names = ", ".join(self.kinds)
        super().__init__(
            f"the {where} contains personal data ({names}) and this key's PII policy blocks it",
            param="input" if where == "input" else None,
        )


# --- validators ---------------------------------------------------------------------------

_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK_CHARS = "10X98765432"
# GB/T 2260 province-level codes; 71/81/82/83 are Taiwan, Hong Kong, Macau residence permits.
_ID_PROVINCES = frozenset(
    {*range(11, 16), *range(21, 24), *range(31, 38), *range(41, 47), *range(50, 55)}
    | {*range(61, 66), 71, 81, 82, 83}
)
_EARLIEST_BIRTH = date(1900, 1, 1)


def cn_id_check_char(first17: str) -> str:
    """The GB 11643 check character (ISO 7064 MOD 11-2) of the first 17 digits."""
    total = sum(int(d) * w for d, w in zip(first17, _ID_WEIGHTS, strict=True))
    return _ID_CHECK_CHARS[total % 11]


def _plausible_birth(year: int, month: int, day: int, today: date) -> bool:
    try:
        born = date(year, month, day)
    except ValueError:
        return False
    return _EARLIEST_BIRTH <= born <= today


def _cn_id_structure_ok(digits: str, today: date) -> bool:
    """Region and birth date of an 18- or 15-character ID (the checksum aside)."""
    if int(digits[:2]) not in _ID_PROVINCES:
        return False
    if len(digits) == 18:
        year, month, day = int(digits[6:10]), int(digits[10:12]), int(digits[12:14])
    else:
        year, month, day = 1900 + int(digits[6:8]), int(digits[8:10]), int(digits[10:12])
    return _plausible_birth(year, month, day, today)


def is_valid_cn_id(value: str, *, today: date | None = None) -> bool:
    """An 18-character resident ID (checksum, birth date, region) or a 15-digit legacy one.

    Legacy IDs (issued before 1999) have no check digit: birth year ``19YY``,
    date and region are all that can be checked.
    """
    compact = value.replace(" ", "").replace("-", "")
    today = today or date.today()
    if len(compact) == 18:
        body, check = compact[:17], compact[17].upper()
        if not (body.isascii() and body.isdigit() and (check.isdigit() or check == "X")):
            return False
        return cn_id_check_char(body) == check and _cn_id_structure_ok(compact, today)
    if len(compact) == 15 and compact.isascii() and compact.isdigit():
        return _cn_id_structure_ok(compact, today)
    return False


def luhn_ok(digits: str) -> bool:
    """The Luhn (mod 10) check every payment card number carries."""
    if not (digits.isascii() and digits.isdigit()) or len(digits) < 2:
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _issuer_allows(digits: str) -> bool:
    """Issuer prefix and length rules (Visa, Mastercard, Amex, JCB, Discover, UnionPay, ...)."""
    n, first = len(digits), digits[0]
    if first == "4":  # Visa
        return n in (13, 16, 19)
    if first == "3":
        if digits[:2] in ("34", "37"):  # American Express
            return n == 15
        if digits[:2] in ("36", "38", "39") or "300" <= digits[:3] <= "305":  # Diners
            return 14 <= n <= 19
        if "3528" <= digits[:4] <= "3589":  # JCB
            return 16 <= n <= 19
        return False
    if first == "2":  # Mastercard 2-series
        return "2221" <= digits[:4] <= "2720" and n == 16
    if first == "5":  # Mastercard 51-55; Maestro/domestic 50, 56-59
        return n == 16 if "51" <= digits[:2] <= "55" else 16 <= n <= 19
    if first == "6":  # UnionPay 62, Discover 6011/64/65, Maestro and Chinese domestic 60-69
        return 16 <= n <= 19
    return False


def is_valid_bank_card(value: str, *, today: date | None = None) -> bool:
    """13-19 digits, a known issuer prefix and length, Luhn; never a Chinese ID number.

    An 18-digit number whose region and birth date read as a resident ID is not
    a card even if its ID checksum fails: a mistyped ID is still an ID.
    """
    digits = value.replace(" ", "").replace("-", "")
    if not (13 <= len(digits) <= 19 and digits.isascii() and digits.isdigit()):
        return False
    if not (_issuer_allows(digits) and luhn_ok(digits)):
        return False
    return not (len(digits) == 18 and _cn_id_structure_ok(digits, today or date.today()))


def _only_digits(value: str) -> str:
    return "".join(ch for ch in value if ch.isascii() and ch.isdigit())


# --- candidate patterns -------------------------------------------------------------------

# Letters and digits that a match may not touch. Full-width forms are folded to
# ASCII before matching (see _FOLD), so the ASCII class is enough.
_ALNUM = "0-9A-Za-z_"
_LEFT = rf"(?<![{_ALNUM}])(?<![{_ALNUM}][.\-])"
_RIGHT = rf"(?![{_ALNUM}])(?![.\-][{_ALNUM}])"

_FOLD = {cp: cp - 0xFEE0 for cp in range(0xFF01, 0xFF5F)}  # full-width ASCII block
_FOLD[0x3000] = 0x20  # ideographic space


def _compile(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.ASCII | re.VERBOSE)


_CN_ID_RE = _compile(
    rf"""{_LEFT}
    (?: [0-9]{{6}} (?P<sep>[ ]?) [0-9]{{8}} (?P=sep) [0-9]{{3}}[0-9Xx]   # 18, maybe 6 8 4
      | [0-9]{{15}} )                                                  # legacy
    {_RIGHT}"""
)

_BANK_CARD_RE = _compile(
    rf"""{_LEFT}
    (?: [0-9]{{13,19}}
      | [0-9]{{4}} (?P<s1>[ \-]) [0-9]{{4}} (?: (?P=s1)[0-9]{{4}} ){{1,3}}
        (?: (?P=s1)[0-9]{{1,4}} )?                                     # 4-4-4-4-3 and shorter
      | [0-9]{{4}} (?P<s2>[ \-]) [0-9]{{6}} (?P=s2) [0-9]{{4,5}} )      # Amex / Diners 4-6-5
    {_RIGHT}"""
)

_CN_MOBILE_RE = _compile(
    rf"""{_LEFT}
    (?: (?: \+86 | 0086 | 86 | \(\+?86\) ) [ \-]? )?
    1[3-9][0-9] (?: [0-9]{{8}} | (?P<sep>[ \-]) [0-9]{{4}} (?P=sep) [0-9]{{4}} )
    {_RIGHT}"""
)

_PHONE_RE = _compile(
    rf"""{_LEFT}
    (?:
        # international: +CC then groups joined by single separators
        (?P<intl> \+ [1-9][0-9]{{0,2}} (?: [ \-.]? \( [0-9]{{1,4}} \) )?
                  (?: [ \-.]? [0-9]{{1,12}} ) (?: [ \-.] [0-9]{{1,8}} ){{0,5}} )
      # North American: (415) 555-0132, 415-555-0132, 1-800-555-0199
      | (?P<nanp> (?: 1 [ \-.] )?
                  (?: \( [0-9]{{3}} \) [ ]? [0-9]{{3}} [ \-.]
                    | [0-9]{{3}} (?P<ns>[\-.]) [0-9]{{3}} (?P=ns) )
                  [0-9]{{4}} (?: [ ]? (?: ext\.? | x ) [ ]? [0-9]{{1,5}} )? )
      # Chinese landline: 010-12345678, (0755)1234567, 021 6123 4567, 010-12345678-801
      | (?P<cn> (?: \( 0[0-9]{{2,3}} \) [ \-]? | 0[0-9]{{2,3}} [ \-] )
                [1-9][0-9]{{2,3}} [ \-]? [0-9]{{4}}
                (?: (?: - | 转 | [ ]?ext\.?[ ]? ) [0-9]{{1,5}} )? )
    )
    {_RIGHT}"""
)

_EMAIL_RE = _compile(
    r"""(?<![A-Za-z0-9._%+\-])
    (?P<local> [A-Za-z0-9_%+\-] (?: [A-Za-z0-9._%+\-]{0,62} [A-Za-z0-9_%+\-] )? )
    @
    (?P<domain> (?: [A-Za-z0-9] (?: [A-Za-z0-9\-]{0,61} [A-Za-z0-9] )? \. )+ [A-Za-z]{2,24} )
    (?![A-Za-z0-9\-]) (?!\.[A-Za-z0-9])"""
)

_IPV4_RE = _compile(rf"{_LEFT} [0-9]{{1,3}} (?: \. [0-9]{{1,3}} ){{3}} {_RIGHT}")

# Hex groups and colons with at least two colons, maybe ending in a dotted IPv4;
# ``ipaddress`` decides. The lookbehind keeps ``std::x`` and ``1.2:3`` out.
_IPV6_RE = _compile(
    r"""(?<![0-9A-Za-z_.])
    (?= [0-9A-Fa-f]* : [0-9A-Fa-f]* : )
    [0-9A-Fa-f:]{2,39}
    (?: (?<=:) [0-9]{1,3} (?: \. [0-9]{1,3} ){3} )?
    (?![0-9A-Za-z_]) (?!\.[0-9])"""
)

# "version 1.2.3.4", "固件版本 2.0.1.5": a dotted quad that names a release, not a host.
# (Full-width colons are already folded to ASCII when this runs.)
_VERSION_CONTEXT = re.compile(
    r"(?:\bversion|\bver\.?|\brelease|\bbuild|\bv|版本号?|固件)\s*[:=]?\s*$", re.IGNORECASE
)


# --- per-kind acceptance: given a candidate, the end of the accepted match (or None) --------

_Accept = Callable[[str, re.Match[str], date], int | None]


def _shorter_ends(text: str, start: int, end: int) -> list[int]:
    """``end`` and then each end just before a space inside ``text[start:end]``, longest first.

    Space-grouped numbers can run into a following number ("4111 1111 1111 1111
    123"); when the whole run fails validation, a shorter prefix may pass.
    """
    ends = [end]
    ends.extend(i for i in range(end - 1, start, -1) if text[i] == " " and text[i - 1].isdigit())
    return ends


def _accept_cn_id(text: str, m: re.Match[str], today: date) -> int | None:
    return m.end() if is_valid_cn_id(m.group(), today=today) else None


def _accept_bank_card(text: str, m: re.Match[str], today: date) -> int | None:
    for end in _shorter_ends(text, m.start(), m.end()):
        if is_valid_bank_card(text[m.start() : end], today=today):
            return end
    return None


def _accept_cn_mobile(text: str, m: re.Match[str], today: date) -> int | None:
    return m.end()


def _nanp_ok(national: str) -> bool:
    # Area code and exchange both start with 2-9 in the North American plan.
    return len(national) == 10 and national[0] >= "2" and national[3] >= "2"


_CN_LANDLINE_HEAD = _compile(r"\(? (0[0-9]{2,3}) \)? [ \-]? ([0-9]{3,4} [ \-]? [0-9]{4})")


def _phone_ok(candidate: str, kind: str) -> bool:
    digits = _only_digits(candidate)
    if kind == "nanp":
        core = candidate.split("x")[0].split("ext")[0]
        national = _only_digits(core)
        if len(national) == 11 and national[0] == "1":
            national = national[1:]
        return _nanp_ok(national)
    if kind == "cn":
        head = _CN_LANDLINE_HEAD.match(candidate)
        if head is None:
            return False
        area, local = head.group(1), _only_digits(head.group(2))
        if len(area) == 3:
            return (area == "010" or area.startswith("02")) and len(local) == 8
        return area[1] in "3456789" and len(local) in (7, 8)
    # international
    if digits.startswith("1"):
        return _nanp_ok(digits[1:])
    if digits.startswith("86"):
        return _cn_intl_ok(digits[2:])
    return 8 <= len(digits) <= 15


def _cn_intl_ok(national: str) -> bool:
    """+86 then a mobile or an area code (no trunk 0) and local number."""
    if len(national) == 11 and national[0] == "1" and national[1] in "3456789":
        return True
    if national[:2] == "10" or national[:1] == "2":
        return len(national) == 10
    return national[:1] in "3456789" and len(national) in (10, 11)


def _accept_phone(text: str, m: re.Match[str], today: date) -> int | None:
    kind = next(k for k in ("intl", "nanp", "cn") if m.group(k) is not None)
    for end in _shorter_ends(text, m.start(), m.end()):
        if _phone_ok(text[m.start() : end], kind):
            return end
    return None


def _accept_email(text: str, m: re.Match[str], today: date) -> int | None:
    local = m.group("local")
    if ".." in local or local.startswith(".") or len(m.group("domain")) > 253:
        return None
    return m.end()


def _accept_ipv4(text: str, m: re.Match[str], today: date) -> int | None:
    try:
        ipaddress.IPv4Address(m.group())
    except ValueError:
        return None
    if _VERSION_CONTEXT.search(text, max(0, m.start() - 16), m.start()):
        return None
    return m.end()


def _accept_ipv6(text: str, m: re.Match[str], today: date) -> int | None:
    candidate = m.group()
    # "fe80::1:" at a clause end: retry without the dangling colon.
    options = [candidate]
    if candidate.endswith(":") and not candidate.endswith("::"):
        options.append(candidate[:-1])
    for option in options:
        if not any(ch not in ":" for ch in option):
            continue  # a bare "::" is punctuation, not an address
        try:
            ipaddress.IPv6Address(option)
        except ValueError:
            continue
        return m.start() + len(option)
    return None


@dataclass(frozen=True, slots=True)
class _Detector:
    kind: PiiKind
    pattern: re.Pattern[str]
    accept: _Accept


_DETECTORS: tuple[_Detector, ...] = (
    _Detector(PiiKind.CN_ID, _CN_ID_RE, _accept_cn_id),
    _Detector(PiiKind.BANK_CARD, _BANK_CARD_RE, _accept_bank_card),
    _Detector(PiiKind.CN_MOBILE, _CN_MOBILE_RE, _accept_cn_mobile),
    _Detector(PiiKind.PHONE, _PHONE_RE, _accept_phone),
    _Detector(PiiKind.EMAIL, _EMAIL_RE, _accept_email),
    _Detector(PiiKind.IPV4, _IPV4_RE, _accept_ipv4),
    _Detector(PiiKind.IPV6, _IPV6_RE, _accept_ipv6),
)

# Cheap gates: a kind whose tell-tale character is absent cannot match.
_NEEDS: Mapping[PiiKind, str] = {PiiKind.EMAIL: "@", PiiKind.IPV6: ":", PiiKind.IPV4: "."}


# --- public API ---------------------------------------------------------------------------


def parse_kinds(names: Iterable[str], *, param: str = "kinds") -> frozenset[PiiKind]:
    """Kind names to kinds; an unknown name is an ``InvalidRequestError`` on ``param``."""
    kinds: set[PiiKind] = set()
    for name in names:
        try:
            kinds.add(PiiKind(name))
        except ValueError:
            expected = ", ".join(k.value for k in PiiKind)
            raise InvalidRequestError(
                f"unknown PII kind {name!r}; expected any of {expected}", param=param
            ) from None
    return frozenset(kinds)


def find(
    text: str, kinds: Iterable[PiiKind] | None = None, *, today: date | None = None
) -> list[PiiMatch]:
    """Every PII match in ``text``, in order, non-overlapping.

    All kinds are detected and resolved together before ``kinds`` filters the
    result, so a resident ID that happens to pass Luhn is an ID, never a card,
    whatever is asked for.
    """
    today = today or date.today()
    folded = text.translate(_FOLD)
    candidates: list[tuple[int, int, PiiKind]] = []
    for detector in _DETECTORS:
        needed = _NEEDS.get(detector.kind)
        if needed is not None and needed not in folded:
            continue
        for m in detector.pattern.finditer(folded):
            end = detector.accept(folded, m, today)
            if end is not None:
                candidates.append((m.start(), end, detector.kind))
    # Longest first, then the more specific kind, then leftmost.
    candidates.sort(key=lambda c: (c[0] - c[1], -_PRIORITY[c[2]], c[0]))
    starts: list[int] = []  # accepted spans, sorted by start; they never overlap
    ends: list[int] = []
    chosen: list[tuple[int, int, PiiKind]] = []
    for start, end, kind in candidates:
        i = bisect.bisect_left(starts, start)
        if i < len(starts) and starts[i] < end:
            continue  # overlaps the next accepted span
        if i > 0 and ends[i - 1] > start:
            continue  # overlaps the previous one
        starts.insert(i, start)
        ends.insert(i, end)
        chosen.append((start, end, kind))
    wanted = ALL_KINDS if kinds is None else frozenset(kinds)
    return [
        PiiMatch(kind, start, end, text[start:end])
        for start, end, kind in sorted(chosen)
        if kind in wanted
    ]


def redact(
    text: str, kinds: Iterable[PiiKind] | None = None, *, today: date | None = None
) -> RedactionResult:
    """``text`` with each match replaced by its kind's placeholder (``[ID]``, ``[PHONE]``, ...)."""
    matches = find(text, kinds, today=today)
    if not matches:
        return RedactionResult(text)
    parts: list[str] = []
    cursor = 0
    for match in matches:
        parts.append(text[cursor : match.start])
        parts.append(PLACEHOLDERS[match.kind])
        cursor = match.end
    parts.append(text[cursor:])
    counts = Counter(match.kind for match in matches)
    return RedactionResult("".join(parts), tuple(matches), dict(counts))


# --- policy -------------------------------------------------------------------------------

PolicyMode = Literal["off", "redact", "block"]
PolicyScope = Literal["input", "output", "both"]
_MODES: tuple[str, ...] = get_args(PolicyMode)
_SCOPES: tuple[str, ...] = get_args(PolicyScope)


@dataclass(frozen=True, slots=True)
class PiiPolicy:
    """What to do with PII (``off``, ``redact``, ``block``) and where (``input``, ``output``).

    The string form is ``mode[:scope]``: ``redact`` and ``block`` alone apply to
    both directions; ``off`` takes no scope.
    """

    mode: PolicyMode = "off"
    scope: PolicyScope = "both"

    @classmethod
    def parse(cls, value: str | None) -> PiiPolicy:
        if value is None:
            return cls()
        mode, sep, scope = value.strip().lower().partition(":")
        if mode not in _MODES or (sep and scope not in _SCOPES) or (mode == "off" and sep):
            raise InvalidRequestError(
                f"unknown PII policy {value!r}; expected off, or redact or block "
                "optionally followed by :input, :output or :both",
                param="pii_policy",
            )
        return cls(mode=cast(PolicyMode, mode), scope=cast(PolicyScope, scope or "both"))

    @property
    def applies_to_input(self) -> bool:
        return self.mode != "off" and self.scope in ("input", "both")

    @property
    def applies_to_output(self) -> bool:
        return self.mode != "off" and self.scope in ("output", "both")

    def __str__(self) -> str:
        return (
            self.mode if self.mode == "off" or self.scope == "both" else f"{self.mode}:{self.scope}"
        )


def _apply(policy: PiiPolicy, text: str, where: Literal["input", "output"]) -> str:
    if policy.mode == "redact":
        return redact(text).text
    found = find(text)
    if found:
        raise PiiBlockedError((m.kind for m in found), where=where)
    return text


def apply_input(policy: PiiPolicy, text: str) -> str:
    """The request text as the model may see it: unchanged, redacted, or refused."""
    return _apply(policy, text, "input") if policy.applies_to_input else text


def apply_output(policy: PiiPolicy, text: str) -> str:
    """The model's text as the caller may see it: unchanged, redacted, or refused."""
    return _apply(policy, text, "output") if policy.applies_to_output else text


def strictest(*policies: PiiPolicy | None) -> PiiPolicy:
    """One policy honouring all: ``block`` beats ``redact`` beats ``off``; scopes add up.

    A key's policy and a model's policy both apply to a request, so the request
    gets whichever is stricter in each direction.
    """
    given = [p for p in policies if p is not None and p.mode != "off"]
    if not given:
        return PiiPolicy()
    mode: PolicyMode = "block" if any(p.mode == "block" for p in given) else "redact"
    strongest = [p for p in given if p.mode == mode]
    inputs = any(p.applies_to_input for p in strongest)
    outputs = any(p.applies_to_output for p in strongest)
    scope: PolicyScope = "both" if inputs and outputs else ("input" if inputs else "output")
    return PiiPolicy(mode=mode, scope=scope)
