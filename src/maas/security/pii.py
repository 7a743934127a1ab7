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
must not lie in the future, which reads today's date. The patterns and each kind's
acceptance are in :mod:`maas.security.pii_patterns`, the validators in
:mod:`maas.security.pii_validators`; this module resolves the candidates, redacts,
and applies PII policies.
"""

from __future__ import annotations

import bisect
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from enum import StrEnum
from typing import Literal, cast, get_args

from maas.errors import InvalidRequestError
from maas.security.pii_patterns import (
    BANK_CARD_RE,
    CN_ID_RE,
    CN_MOBILE_RE,
    EMAIL_RE,
    FOLD,
    IPV4_RE,
    IPV6_RE,
    PHONE_RE,
    Accept,
    accept_bank_card,
    accept_cn_id,
    accept_cn_mobile,
    accept_email,
    accept_ipv4,
    accept_ipv6,
    accept_phone,
)


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


@dataclass(frozen=True, slots=True)
class _Detector:
    kind: PiiKind
    pattern: re.Pattern[str]
    accept: Accept


_DETECTORS: tuple[_Detector, ...] = (
    _Detector(PiiKind.CN_ID, CN_ID_RE, accept_cn_id),
    _Detector(PiiKind.BANK_CARD, BANK_CARD_RE, accept_bank_card),
    _Detector(PiiKind.CN_MOBILE, CN_MOBILE_RE, accept_cn_mobile),
    _Detector(PiiKind.PHONE, PHONE_RE, accept_phone),
    _Detector(PiiKind.EMAIL, EMAIL_RE, accept_email),
    _Detector(PiiKind.IPV4, IPV4_RE, accept_ipv4),
    _Detector(PiiKind.IPV6, IPV6_RE, accept_ipv6),
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
    folded = text.translate(FOLD)
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
