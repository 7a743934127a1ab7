"""Scopes and per-model allowlists: what a key may do, and to which models.

``admin`` includes ``deploy``, which includes ``read``; ``infer`` stands apart
(an admin key that should also call models carries both, as the bootstrap key
does). A route names the scopes that may call it; a key passes when any of its
effective scopes is among them.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable

SCOPES = ("admin", "deploy", "read", "infer")

_IMPLIES: dict[str, frozenset[str]] = {
    "admin": frozenset({"admin", "deploy", "read"}),
    "deploy": frozenset({"deploy", "read"}),
    "read": frozenset({"read"}),
    "infer": frozenset({"infer"}),
}


def effective_scopes(scopes: Iterable[str]) -> frozenset[str]:
    """The scopes a key holds once the hierarchy is applied."""
    held: set[str] = set()
    for scope in scopes:
        held |= _IMPLIES.get(scope, frozenset())
    return frozenset(held)


def has_any_scope(scopes: Iterable[str], required: Iterable[str]) -> bool:
    return bool(effective_scopes(scopes) & set(required))


def model_allowed(allowlist: Iterable[str], model: str) -> bool:
    """An empty allowlist allows every model; entries are names or fnmatch globs."""
    patterns = list(allowlist)
    return not patterns or any(fnmatch.fnmatchcase(model, p) for p in patterns)
