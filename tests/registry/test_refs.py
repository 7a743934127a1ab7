import pytest

from maas.errors import InvalidRequestError
from maas.registry.refs import ModelRef, validate_model_name


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("sentiment", ModelRef("sentiment")),
        ("sentiment:3", ModelRef("sentiment", version=3)),
        ("sentiment@production", ModelRef("sentiment", alias="production")),
        ("my.model_v2-x@canary-2", ModelRef("my.model_v2-x", alias="canary-2")),
    ],
)
def test_parse_accepts_the_three_reference_forms(text: str, expected: ModelRef) -> None:
    assert ModelRef.parse(text) == expected
    assert str(ModelRef.parse(text)) == text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "Upper",
        "-lead",
        "a" * 65,
        "name:0",
        "name:x",
        "name:-1",
        "name@9lives",
        "name@",
        "with space",
        "a/b",
        "../etc",
    ],
)
def test_parse_rejects_malformed_references_with_a_clear_error(text: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        ModelRef.parse(text)
    assert "invalid" in info.value.message


def test_name_error_explains_the_allowed_characters() -> None:
    with pytest.raises(InvalidRequestError, match="a-z, 0-9"):
        validate_model_name("Bad Name")
