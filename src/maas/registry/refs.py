"""Model references: ``name``, ``name:3`` and ``name@alias``."""

from __future__ import annotations

import re
from dataclasses import dataclass

from maas.errors import InvalidRequestError

MODEL_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
ALIAS_RE = re.compile(r"^[a-z][a-z0-9-]{0,63}$")
DEFAULT_ALIAS = "production"
MAX_VERSION = 2**31 - 1  # versions are 32-bit integers in the database


def validate_model_name(name: str, *, param: str = "name") -> str:
    """``name`` if it is a valid model name; ``param`` names the field it came from."""
    if not MODEL_NAME_RE.fullmatch(name):
        if MODEL_NAME_RE.fullmatch(name.strip().lower()):
            raise InvalidRequestError(
                f"invalid model name {name!r}: model names are lower case: "
                f"did you mean {name.strip().lower()!r}?",
                param=param,
            )
        raise InvalidRequestError(
            f"invalid model name {name!r}: use 1-64 characters of a-z, 0-9, '.', '_' or '-', "
            "starting with a letter or digit",
            param=param,
        )
    return name


def validate_alias(alias: str) -> str:
    if not ALIAS_RE.fullmatch(alias):
        raise InvalidRequestError(
            f"invalid alias {alias!r}: use 1-64 characters of a-z, 0-9 or '-', "
            "starting with a letter",
            param="alias",
        )
    return alias


def model_name(text: str) -> str:
    """The model name a reference starts with, unvalidated (allowlists, metric labels).

    The same split as ``ModelRef.parse``; use ``parse`` where the reference is acted on.
    """
    return text.strip().partition("@")[0].partition(":")[0]


@dataclass(frozen=True, slots=True)
class ModelRef:
    """A parsed reference. At most one of ``version`` and ``alias`` is set."""

    name: str
    version: int | None = None
    alias: str | None = None

    @classmethod
    def parse(cls, text: str) -> ModelRef:
        """Parse ``name``, ``name:3`` or ``name@alias``; errors name the ``model`` field."""
        text = text.strip()
        if "@" in text:
            name, _, alias = text.partition("@")
            return cls(validate_model_name(name, param="model"), alias=validate_alias(alias))
        if ":" in text:
            name, _, number = text.partition(":")
            if not (number.isascii() and number.isdigit()) or not 1 <= int(number) <= MAX_VERSION:
                raise InvalidRequestError(
                    f"invalid version in reference {text!r}: expected a positive integer",
                    param="model",
                )
            return cls(validate_model_name(name, param="model"), version=int(number))
        return cls(validate_model_name(text, param="model"))

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name}:{self.version}"
        if self.alias is not None:
            return f"{self.name}@{self.alias}"
        return self.name
