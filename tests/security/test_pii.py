"""PII detection: validators, resolution, redaction, policy, and scores over a labelled corpus.

``pii_corpus.jsonl`` is static, hand-written data: one sentence per line with
the exact expected spans (kind, start, end, text). Valid IDs and card numbers
in it were made with correct checksums when it was written; nothing is
generated here. Run with ``-s`` to see the per-kind table.
"""

# Chinese text is written with full-width punctuation and, here on purpose, full-width digits.

from __future__ import annotations

import itertools
import json
import time
from collections import Counter
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from maas.errors import InvalidRequestError
from maas.security.pii import (
    PiiBlockedError,
    PiiKind,
    PiiPolicy,
    apply_input,
    apply_output,
    find,
    parse_kinds,
    redact,
)
from maas.security.pii_validators import (
    cn_id_check_char,
    is_valid_bank_card,
    is_valid_cn_id,
    luhn_ok,
)

CORPUS = Path(__file__).with_name("pii_corpus.jsonl")

# Scored groups: a Chinese mobile found as a generic phone (or the reverse) is
# still a phone number found; the strict per-kind table is printed as well.
GROUP = {
    "cn_id": "id",
    "cn_mobile": "phone",
    "phone": "phone",
    "bank_card": "bank_card",
    "email": "email",
    "ipv4": "ip",
    "ipv6": "ip",
}
ASSERTED = ("id", "phone", "bank_card", "email")
THRESHOLD = 0.95

# Valid resident IDs whose 18 digits also pass Luhn under a UnionPay-like prefix.
ID_PASSING_LUHN = "620102198802271225"
# Region and birth date of an ID, wrong ID checksum, yet Luhn-valid: a mistyped ID.
MISTYPED_ID_PASSING_LUHN = "620102198511023305"


def _load() -> list[dict[str, Any]]:
    with CORPUS.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


Score = dict[str, Counter[str]]


def _score(rows: list[dict[str, Any]], key: dict[str, str]) -> Score:
    score: Score = {"tp": Counter(), "fp": Counter(), "fn": Counter()}
    for row in rows:
        expected = {(s["start"], s["end"], key[s["kind"]]) for s in row["spans"]}
        found = {(m.start, m.end, key[m.kind.value]) for m in find(row["text"])}
        score["tp"].update(label for *_, label in expected & found)
        score["fp"].update(label for *_, label in found - expected)
        score["fn"].update(label for *_, label in expected - found)
    return score


def _precision(score: Score, label: str) -> float:
    predicted = score["tp"][label] + score["fp"][label]
    return score["tp"][label] / predicted if predicted else 1.0


def _recall(score: Score, label: str) -> float:
    actual = score["tp"][label] + score["fn"][label]
    return score["tp"][label] / actual if actual else 1.0


def _table(score: Score, labels: list[str]) -> str:
    lines = [
        f"{'kind':<10} {'spans':>5} {'tp':>4} {'fp':>4} {'fn':>4} {'precision':>9} {'recall':>7}"
    ]
    for label in labels:
        tp, fp, fn = score["tp"][label], score["fp"][label], score["fn"][label]
        lines.append(
            f"{label:<10} {tp + fn:>5} {tp:>4} {fp:>4} {fn:>4} "
            f"{_precision(score, label):>9.3f} {_recall(score, label):>7.3f}"
        )
    return "\n".join(lines)


@pytest.fixture(scope="module")
def corpus() -> list[dict[str, Any]]:
    return _load()


@pytest.fixture(scope="module")
def grouped(corpus: list[dict[str, Any]]) -> Score:
    return _score(corpus, GROUP)


# --- the corpus itself --------------------------------------------------------------------


def test_corpus_spans_are_exact_and_sized(corpus: list[dict[str, Any]]) -> None:
    assert len(corpus) >= 150
    languages = Counter(row["lang"] for row in corpus)
    assert set(languages) == {"zh", "en"}
    assert min(languages.values()) >= 0.4 * len(corpus)
    assert sum(1 for row in corpus if not row["spans"]) >= 40  # hard negatives
    for row in corpus:
        for span in row["spans"]:
            assert span["kind"] in GROUP, row["id"]
            assert row["text"][span["start"] : span["end"]] == span["text"], row["id"]


def test_corpus_covers_every_kind(corpus: list[dict[str, Any]]) -> None:
    kinds = Counter(span["kind"] for row in corpus for span in row["spans"])
    assert set(kinds) == {k.value for k in PiiKind}
    for group in ASSERTED:
        assert sum(n for kind, n in kinds.items() if GROUP[kind] == group) >= 30, group


# --- precision and recall -----------------------------------------------------------------


def test_per_kind_table(corpus: list[dict[str, Any]], grouped: Score) -> None:
    strict = _score(corpus, {kind: kind for kind in GROUP})
    print(f"\nPII corpus: {len(corpus)} sentences, exact span match\n")
    print(_table(grouped, [*ASSERTED, "ip"]))
    print("\nstrict kinds (a mobile reported as 'phone' counts as wrong here):\n")
    print(_table(strict, [k.value for k in PiiKind]))
    assert sum(grouped["tp"].values()) > 0


@pytest.mark.parametrize("group", ASSERTED)
def test_precision_on_the_corpus_is_at_least_095(grouped: Score, group: str) -> None:
    assert _precision(grouped, group) >= THRESHOLD


@pytest.mark.parametrize("group", ASSERTED)
def test_recall_on_the_corpus_is_at_least_095(grouped: Score, group: str) -> None:
    assert _recall(grouped, group) >= THRESHOLD


def test_ip_scores_stay_high(grouped: Score) -> None:
    assert _precision(grouped, "ip") >= 0.9
    assert _recall(grouped, "ip") >= 0.9


# --- validators ---------------------------------------------------------------------------


def test_id_check_char_matches_the_gb11643_examples() -> None:
    assert cn_id_check_char("11010519491231002") == "X"
    assert cn_id_check_char("44052418800101001") == "4"


def test_valid_id_with_x_check_char_in_either_case() -> None:
    assert is_valid_cn_id("11010519491231002X")
    assert is_valid_cn_id("11010519491231002x")


@pytest.mark.parametrize(
    ("number", "why"),
    [
        ("110105194912310021", "wrong check digit"),
        ("440524188001010014", "checksum right but born before 1900"),
        ("110105194902300026", "30 February"),
        ("910105194912310024", "region 91 is no province"),
        ("000105194912310024", "region starts with 0"),
        ("11010519491231002", "17 digits"),
    ],
)
def test_invalid_ids_are_rejected(number: str, why: str) -> None:
    assert not is_valid_cn_id(number), why


def test_id_born_in_the_future_is_rejected() -> None:
    body = "11010520300101001"
    number = body + cn_id_check_char(body)
    assert is_valid_cn_id(number, today=date(2031, 1, 1))
    assert not is_valid_cn_id(number, today=date(2024, 1, 15))


def test_legacy_15_digit_id_needs_a_real_date() -> None:
    assert is_valid_cn_id("110105491231002")  # 1949-12-31
    assert not is_valid_cn_id("110105491331002")  # month 13


def test_luhn() -> None:
    assert luhn_ok("79927398713")
    assert luhn_ok("4111111111111111")
    assert not luhn_ok("4111111111111112")
    assert not luhn_ok("4111-1111")


@pytest.mark.parametrize(
    ("number", "ok"),
    [
        ("4111 1111 1111 1111", True),
        ("378282246310005", True),  # Amex, 15 digits
        ("6222026590033695721", True),  # UnionPay, 19 digits
        ("4353620930705987", False),  # fails Luhn
        ("356938035643809", False),  # an IMEI: Luhn-valid, 15 digits, not Amex
        ("1705305600123", False),  # a millisecond timestamp: no issuer starts with 1
        (ID_PASSING_LUHN, False),  # a resident ID is never a card
        (MISTYPED_ID_PASSING_LUHN, False),  # nor is a mistyped one
    ],
)
def test_bank_card_validation(number: str, ok: bool) -> None:
    assert is_valid_bank_card(number) is ok


# --- finding ------------------------------------------------------------------------------


def _found(text: str) -> list[tuple[str, str]]:
    return [(m.kind.value, m.text) for m in find(text)]


def test_mobile_inside_chinese_text_without_spaces() -> None:
    text = "我的手机号是13812345678谢谢"
    [match] = find(text)
    assert (match.kind, match.text) == (PiiKind.CN_MOBILE, "13812345678")
    assert text[match.start : match.end] == "13812345678"


def test_every_kind_inside_chinese_text_without_spaces() -> None:
    text = (
        f"身份证{ID_PASSING_LUHN}卡号6222026590033695721邮箱li@example.cn"
        "电话010-12345678地址192.0.2.1和2001:db8::1完"
    )
    assert _found(text) == [
        ("cn_id", ID_PASSING_LUHN),
        ("bank_card", "6222026590033695721"),
        ("email", "li@example.cn"),
        ("phone", "010-12345678"),
        ("ipv4", "192.0.2.1"),
        ("ipv6", "2001:db8::1"),
    ]


@pytest.mark.parametrize(
    "text",
    [
        "订单13812345678901",  # a mobile prefix inside a longer digit run
        "流水2024011513812345678",
        "ab13812345678",
        "13812345678cd",
        "v1.2.3.4",
        "1.2.3.4.5",
        "version 10.4.1.2",
        "2024-01-15 10:30:45",
        "550e8400-e29b-41d4-a716-446655440000",
        "00:1A:2B:3C:4D:5E",
        "std::vector",
        "138****5678",
    ],
)
def test_no_partial_or_lookalike_matches(text: str) -> None:
    assert find(text) == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("+86 138 1234 5678", "+86 138 1234 5678"),
        ("0086-138-1234-5678", "0086-138-1234-5678"),
        ("8613812345678", "8613812345678"),
        ("(+86) 13812345678", "(+86) 13812345678"),
    ],
)
def test_mobile_prefixes_and_groupings(text: str, expected: str) -> None:
    assert _found(text) == [("cn_mobile", expected)]


@pytest.mark.parametrize(
    "number",
    [
        "(415) 555-0132",
        "415-555-0132",
        "1-800-555-0199",
        "+1 415 555 0132",
        "+44 20 7946 0958",
        "+81 3-1234-5678",
        "010-12345678",
        "0755-1234567",
        "(0755)12345678",
    ],
)
def test_generic_phone_formats(number: str) -> None:
    assert _found(f"call {number} today") == [("phone", number)]


def test_full_width_digits_match_with_original_offsets() -> None:
    text = "手机：１３８１２３４５６７８。"
    [match] = find(text)
    assert match.kind is PiiKind.CN_MOBILE
    assert match.text == "１３８１２３４５６７８"
    assert text[match.start : match.end] == match.text


def test_an_id_that_passes_luhn_is_an_id_not_a_card() -> None:
    assert _found(f"no. {ID_PASSING_LUHN}") == [("cn_id", ID_PASSING_LUHN)]


def test_filtering_kinds_happens_after_resolution() -> None:
    # Asking only for cards must not turn the ID into a card.
    assert find(f"no. {ID_PASSING_LUHN}", kinds=[PiiKind.BANK_CARD]) == []


def test_longest_match_wins_over_contained_ones() -> None:
    assert _found("mail 13812345678@example.com") == [("email", "13812345678@example.com")]
    assert _found("peer ::ffff:192.0.2.128 closed") == [("ipv6", "::ffff:192.0.2.128")]


def test_mobile_beats_generic_phone_on_the_same_span() -> None:
    assert _found("+8613812345678") == [("cn_mobile", "+8613812345678")]


def test_space_grouped_card_followed_by_a_number_keeps_the_valid_prefix() -> None:
    assert _found("4111 1111 1111 1111 123") == [("bank_card", "4111 1111 1111 1111")]


def test_matches_are_sorted_and_disjoint() -> None:
    text = " ".join(row["text"] for row in _load())
    matches = find(text)
    assert all(a.end <= b.start for a, b in itertools.pairwise(matches))


def test_pathological_inputs_stay_fast() -> None:
    for text in (
        "1" * 200_000,
        "1234 " * 40_000,
        "a:" * 100_000,
        "a." * 100_000 + "@x",
        "+1 " * 60_000,
    ):
        started = time.perf_counter()
        find(text)
        assert time.perf_counter() - started < 2.0


# --- redaction ----------------------------------------------------------------------------


def test_redact_replaces_each_kind_with_its_placeholder() -> None:
    text = (
        f"张三 13812345678，邮箱 zhang@example.com，身份证 {ID_PASSING_LUHN}，"
        "卡 4111 1111 1111 1111，座机 010-12345678，来自 10.0.0.1 和 ::1"
    )
    result = redact(text)
    assert result.text == (
        "张三 [PHONE]，邮箱 [EMAIL]，身份证 [ID]，卡 [BANK_CARD]，座机 [PHONE]，来自 [IP] 和 [IP]"
    )
    assert result.counts == {
        PiiKind.CN_MOBILE: 1,
        PiiKind.EMAIL: 1,
        PiiKind.CN_ID: 1,
        PiiKind.BANK_CARD: 1,
        PiiKind.PHONE: 1,
        PiiKind.IPV4: 1,
        PiiKind.IPV6: 1,
    }
    assert [m.text for m in result.matches][:2] == ["13812345678", "zhang@example.com"]


def test_redact_only_the_kinds_asked_for() -> None:
    result = redact("13812345678 zhang@example.com", kinds=[PiiKind.EMAIL])
    assert result.text == "13812345678 [EMAIL]"
    assert result.counts == {PiiKind.EMAIL: 1}


def test_redact_leaves_clean_text_alone() -> None:
    result = redact("订单号：202401151030451234，请在24小时内付款。")
    assert result.text == "订单号：202401151030451234，请在24小时内付款。"
    assert result.matches == ()
    assert result.counts == {}


def test_parse_kinds_refuses_unknown_names() -> None:
    assert parse_kinds(["email", "cn_id"]) == {PiiKind.EMAIL, PiiKind.CN_ID}
    with pytest.raises(InvalidRequestError) as info:
        parse_kinds(["email", "ssn"])
    assert info.value.param == "kinds"
    assert "ssn" in info.value.message


# --- policy -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "mode", "scope", "canonical"),
    [
        ("off", "off", "both", "off"),
        ("redact", "redact", "both", "redact"),
        ("redact:input", "redact", "input", "redact:input"),
        ("redact:output", "redact", "output", "redact:output"),
        ("redact:both", "redact", "both", "redact"),
        ("block", "block", "both", "block"),
        ("block:input", "block", "input", "block:input"),
        (" Redact:Input ", "redact", "input", "redact:input"),
    ],
)
def test_policy_parses(value: str, mode: str, scope: str, canonical: str) -> None:
    policy = PiiPolicy.parse(value)
    assert (policy.mode, policy.scope, str(policy)) == (mode, scope, canonical)
    assert PiiPolicy.parse(str(policy)) == policy


@pytest.mark.parametrize(
    "value", ["off", "redact", "redact:input", "redact:output", "block", "block:input"]
)
def test_policy_round_trips_through_its_string_form(value: str) -> None:
    assert str(PiiPolicy.parse(value)) == value


def test_no_policy_means_off() -> None:
    assert PiiPolicy.parse(None) == PiiPolicy(mode="off")


@pytest.mark.parametrize(
    "value", ["", "foo", "redact:", "redact:sideways", "off:input", "block:input:x", "redact input"]
)
def test_bad_policy_strings_are_invalid_requests(value: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        PiiPolicy.parse(value)
    assert info.value.param == "pii_policy"


def test_policy_directions() -> None:
    assert not PiiPolicy.parse("off").applies_to_input
    assert PiiPolicy.parse("redact:input").applies_to_input
    assert not PiiPolicy.parse("redact:input").applies_to_output
    assert PiiPolicy.parse("block").applies_to_output


TEXT = "call 13812345678 or mail zhang@example.com"


def test_apply_input_redacts() -> None:
    assert apply_input(PiiPolicy.parse("redact"), TEXT) == "call [PHONE] or mail [EMAIL]"


def test_apply_input_passes_through_when_off_or_output_only() -> None:
    assert apply_input(PiiPolicy.parse("off"), TEXT) == TEXT
    assert apply_input(PiiPolicy.parse("redact:output"), TEXT) == TEXT


def test_block_names_the_kinds_and_never_the_values() -> None:
    with pytest.raises(PiiBlockedError) as info:
        apply_input(PiiPolicy.parse("block"), TEXT)
    error = info.value
    assert isinstance(error, InvalidRequestError)
    assert error.code == "pii_blocked"
    assert error.status == 400
    assert error.kinds == (PiiKind.CN_MOBILE, PiiKind.EMAIL)
    assert "cn_mobile" in error.message and "email" in error.message
    assert "13812345678" not in error.message and "zhang@example.com" not in error.message


def test_block_lets_clean_text_through() -> None:
    assert apply_input(PiiPolicy.parse("block"), "no personal data here") == "no personal data here"


def test_apply_output_follows_the_output_direction() -> None:
    assert apply_output(PiiPolicy.parse("redact:input"), TEXT) == TEXT
    assert apply_output(PiiPolicy.parse("redact:output"), TEXT) == "call [PHONE] or mail [EMAIL]"
    with pytest.raises(PiiBlockedError):
        apply_output(PiiPolicy.parse("block:output"), TEXT)
