"""Where PII can be in text: one precompiled candidate pattern per kind, and per kind an
acceptance function that validates a candidate and returns the end of the accepted match.

Digit runs only match whole: a candidate may not touch a letter or digit on
either side, nor continue through ``.``/``-`` into one (``1.2.3.4.5``,
``2024-01-15``). The lookarounds use explicit ASCII classes, not ``\\b``, so
they work in Chinese text, which has no spaces: in ``手机13812345678谢谢`` the
CJK characters are boundaries. Patterns run on text folded by :data:`FOLD`
(full-width digits, letters and punctuation, U+FF01-U+FF5E, mapped one-to-one
to ASCII), so offsets still index the original text.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from datetime import date

from maas.security.pii_validators import is_valid_bank_card, is_valid_cn_id, phone_ok

# --- candidate patterns -------------------------------------------------------------------

# Letters and digits that a match may not touch. Full-width forms are folded to
# ASCII before matching (see FOLD), so the ASCII class is enough.
_ALNUM = "0-9A-Za-z_"
_LEFT = rf"(?<![{_ALNUM}])(?<![{_ALNUM}][.\-])"
_RIGHT = rf"(?![{_ALNUM}])(?![.\-][{_ALNUM}])"

FOLD = {cp: cp - 0xFEE0 for cp in range(0xFF01, 0xFF5F)}  # full-width ASCII block
FOLD[0x3000] = 0x20  # ideographic space


def _compile(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.ASCII | re.VERBOSE)


CN_ID_RE = _compile(
    rf"""{_LEFT}
    (?: [0-9]{{6}} (?P<sep>[ ]?) [0-9]{{8}} (?P=sep) [0-9]{{3}}[0-9Xx]   # 18, maybe 6 8 4
      | [0-9]{{15}} )                                                  # legacy
    {_RIGHT}"""
)

BANK_CARD_RE = _compile(
    rf"""{_LEFT}
    (?: [0-9]{{13,19}}
      | [0-9]{{4}} (?P<s1>[ \-]) [0-9]{{4}} (?: (?P=s1)[0-9]{{4}} ){{1,3}}
        (?: (?P=s1)[0-9]{{1,4}} )?                                     # 4-4-4-4-3 and shorter
      | [0-9]{{4}} (?P<s2>[ \-]) [0-9]{{6}} (?P=s2) [0-9]{{4,5}} )      # Amex / Diners 4-6-5
    {_RIGHT}"""
)

CN_MOBILE_RE = _compile(
    rf"""{_LEFT}
    (?: (?: \+86 | 0086 | 86 | \(\+?86\) ) [ \-]? )?
    1[3-9][0-9] (?: [0-9]{{8}} | (?P<sep>[ \-]) [0-9]{{4}} (?P=sep) [0-9]{{4}} )
    {_RIGHT}"""
)

PHONE_RE = _compile(
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

EMAIL_RE = _compile(
    r"""(?<![A-Za-z0-9._%+\-])
    (?P<local> [A-Za-z0-9_%+\-] (?: [A-Za-z0-9._%+\-]{0,62} [A-Za-z0-9_%+\-] )? )
    @
    (?P<domain> (?: [A-Za-z0-9] (?: [A-Za-z0-9\-]{0,61} [A-Za-z0-9] )? \. )+ [A-Za-z]{2,24} )
    (?![A-Za-z0-9\-]) (?!\.[A-Za-z0-9])"""
)

IPV4_RE = _compile(rf"{_LEFT} [0-9]{{1,3}} (?: \. [0-9]{{1,3}} ){{3}} {_RIGHT}")

# Hex groups and colons with at least two colons, maybe ending in a dotted IPv4;
# ``ipaddress`` decides. The lookbehind keeps ``std::x`` and ``1.2:3`` out.
IPV6_RE = _compile(
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

Accept = Callable[[str, re.Match[str], date], int | None]


def _shorter_ends(text: str, start: int, end: int) -> list[int]:
    """``end`` and then each end just before a space inside ``text[start:end]``, longest first.

    Space-grouped numbers can run into a following number ("4111 1111 1111 1111
    123"); when the whole run fails validation, a shorter prefix may pass.
    """
    ends = [end]
    ends.extend(i for i in range(end - 1, start, -1) if text[i] == " " and text[i - 1].isdigit())
    return ends


def accept_cn_id(text: str, m: re.Match[str], today: date) -> int | None:
    return m.end() if is_valid_cn_id(m.group(), today=today) else None


def accept_bank_card(text: str, m: re.Match[str], today: date) -> int | None:
    for end in _shorter_ends(text, m.start(), m.end()):
        if is_valid_bank_card(text[m.start() : end], today=today):
            return end
    return None


def accept_cn_mobile(text: str, m: re.Match[str], today: date) -> int | None:
    return m.end()


def accept_phone(text: str, m: re.Match[str], today: date) -> int | None:
    kind = next(k for k in ("intl", "nanp", "cn") if m.group(k) is not None)
    for end in _shorter_ends(text, m.start(), m.end()):
        if phone_ok(text[m.start() : end], kind):
            return end
    return None


def accept_email(text: str, m: re.Match[str], today: date) -> int | None:
    local = m.group("local")
    if ".." in local or local.startswith(".") or len(m.group("domain")) > 253:
        return None
    return m.end()


def accept_ipv4(text: str, m: re.Match[str], today: date) -> int | None:
    try:
        ipaddress.IPv4Address(m.group())
    except ValueError:
        return None
    if _VERSION_CONTEXT.search(text, max(0, m.start() - 16), m.start()):
        return None
    return m.end()


def accept_ipv6(text: str, m: re.Match[str], today: date) -> int | None:
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
