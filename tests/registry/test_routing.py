"""Routing policies in the registry: checked targets, history, epochs, deletes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from maas.errors import InvalidRequestError, NotFoundError
from maas.registry.epochs import REGISTRY, read_all
from maas.registry.models import RoutingEventRow, RoutingPolicyRow
from maas.registry.routing import (
    Shadow,
    clear_routing,
    get_routing,
    parse_policy,
    routing_history,
    set_routing,
)
from maas.registry.store import Registry


@pytest.fixture
def three_versions(registry: Registry, hf_dir: Path) -> Registry:
    for _ in range(3):
        registry.push(hf_dir, "clf", task="text-classification")
    registry.set_alias("clf", "candidate", 2)
    return registry


def test_a_policy_is_stored_read_back_and_every_change_kept_in_its_history(
    three_versions: Registry,
) -> None:
    db = three_versions.db
    assert get_routing(db, "clf") is None
    body = {"split": {"1": 90, "@candidate": 10}, "sticky": "key", "shadow": {"version": 3}}
    policy = set_routing(db, "clf", body, actor="alice")
    assert policy.split == (("1", 90), ("@candidate", 10))
    assert policy.sticky == "key" and policy.shadow == Shadow(3, 1.0)
    assert policy.updated_by == "alice" and policy.updated_at is not None
    assert get_routing(db, "clf") == policy
    set_routing(db, "clf", {"split": {"2": 1}}, actor="bob")
    clear_routing(db, "clf", actor="carol")
    assert get_routing(db, "clf") is None
    history = routing_history(db, "clf")
    assert [e.actor for e in history] == ["alice", "bob", "carol"]
    assert history[0].policy == policy.body() and history[2].policy is None


def test_setting_and_clearing_a_policy_moves_the_registry_epoch(three_versions: Registry) -> None:
    db = three_versions.db
    before = read_all(db)[REGISTRY]
    set_routing(db, "clf", {"split": {"1": 1}})
    middle = read_all(db)[REGISTRY]
    clear_routing(db, "clf")
    assert before < middle < read_all(db)[REGISTRY]


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ([], "split", "JSON object"),
        ({"split": {}}, "split", "targets and weights"),
        ({"split": {"1": 1}, "weights": 1}, "weights", "unknown routing field"),
        ({"split": {"x": 1}}, "split", "neither a version number nor an @alias"),
        ({"split": {"@Bad!": 1}}, "split", "alias"),
        ({"split": {"1": -1}}, "split", "whole number"),
        ({"split": {"1": 0.5}}, "split", "whole number"),
        ({"split": {"1": True}}, "split", "whole number"),
        ({"split": {"1": 0}}, "split", "above 0"),
        ({"split": {"1": 1}, "sticky": "ip"}, "sticky", '"key" or null'),
        ({"split": {"1": 1}, "shadow": 3}, "shadow", "version"),
        ({"split": {"1": 1}, "shadow": {"version": 3, "fraction": 0}}, "shadow", "above 0"),
        ({"split": {"1": 1}, "shadow": {"version": 3, "fraction": 2}}, "shadow", "at most 1"),
        ({"split": {str(i): 1 for i in range(1, 18)}}, "split", "more than 16"),
    ],
)
def test_a_malformed_policy_is_refused_naming_its_field(body: Any, field: str, words: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        parse_policy("clf", body)
    assert caught.value.param == field and words in caught.value.message


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"split": {"9": 1}}, "split", "clf:9 does not exist"),
        ({"split": {"@nope": 1}}, "split", "no alias 'nope'"),
        ({"split": {"1": 1}, "shadow": {"version": 9}}, "shadow", "not found"),
    ],
)
def test_targets_that_do_not_exist_are_refused_and_nothing_is_stored(
    three_versions: Registry, body: Any, field: str, words: str
) -> None:
    with pytest.raises((InvalidRequestError, NotFoundError)) as caught:
        set_routing(three_versions.db, "clf", body)
    assert words in caught.value.message
    assert get_routing(three_versions.db, "clf") is None
    assert routing_history(three_versions.db, "clf") == []


def test_an_unready_version_cannot_receive_traffic(three_versions: Registry) -> None:
    three_versions.archive_version("clf:3")
    with pytest.raises(InvalidRequestError, match="archived"):
        set_routing(three_versions.db, "clf", {"split": {"3": 1}})
    with pytest.raises(InvalidRequestError, match="archived"):
        set_routing(three_versions.db, "clf", {"split": {"1": 1}, "shadow": {"version": 3}})


def test_deleting_the_model_deletes_its_policy_and_history(three_versions: Registry) -> None:
    set_routing(three_versions.db, "clf", {"split": {"1": 1}})
    three_versions.delete_model("clf", force=True)
    with pytest.raises(NotFoundError):
        get_routing(three_versions.db, "clf")
    with three_versions.db.read() as s:
        left = [
            s.scalar(select(func.count()).select_from(t))
            for t in (RoutingPolicyRow, RoutingEventRow)
        ]
    assert left == [0, 0]
