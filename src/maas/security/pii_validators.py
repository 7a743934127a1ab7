"""Validators of PII candidates: the checks that cut a pattern's false positives.

Resident ID numbers (GB 11643 check character, region, plausible birth date), payment
cards (issuer prefix and length, Luhn) and phone numbers (North American numbering plan,
Chinese landline area codes and mobiles, other international numbers by length).
Everything here is a pure function of its arguments and ``today``.
"""

from __future__ import annotations

import re
from datetime import date

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


def _nanp_ok(national: str) -> bool:
    # Area code and exchange both start with 2-9 in the North American plan.
    return len(national) == 10 and national[0] >= "2" and national[3] >= "2"


_CN_LANDLINE_HEAD = re.compile(
    r"\(? (0[0-9]{2,3}) \)? [ \-]? ([0-9]{3,4} [ \-]? [0-9]{4})", re.ASCII | re.VERBOSE
)


def phone_ok(candidate: str, kind: str) -> bool:
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
