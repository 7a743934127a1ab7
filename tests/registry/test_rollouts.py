"""Rollouts in the registry: the checked plan, the routing each step writes, the
compare-and-set that lets one instance take a step, and the figures from usage rows."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from maas.errors import ConflictError, InvalidRequestError
from maas.registry import rollouts
from maas.registry.models import UsageRow, utcnow
from maas.registry.rollout_figures import version_figures
from maas.registry.routing import get_routing, set_routing
from maas.registry.store import Registry


@pytest.fixture
def clf(registry: Registry, hf_dir: Path) -> Registry:
    for _ in range(3):
        registry.push(hf_dir, "clf", task="text-classification")
    registry.set_alias("clf", "candidate", 2)
    return registry  # production: 1


def test_a_rollout_splits_traffic_by_its_first_step_and_refuses_manual_routing(
    clf: Registry,
) -> None:
    r = rollouts.start_rollout(
        clf.db, "clf", {"candidate": "@candidate", "steps": [10, 50, 100]}, actor="alice"
    )
    assert (r.candidate, r.baseline, r.state, r.percent) == (2, 1, "running", 10)
    policy = get_routing(clf.db, "clf")
    assert policy is not None and dict(policy.split) == {"2": 10, "1": 90}
    assert [e.action for e in r.events] == ["start"]
    with pytest.raises(ConflictError, match="rollout"):
        set_routing(clf.db, "clf", {"split": {"3": 1}})
    with pytest.raises(ConflictError, match="already has rollout"):
        rollouts.start_rollout(clf.db, "clf", {"candidate": 3})


def test_each_step_is_taken_once_even_when_two_controllers_race(clf: Registry) -> None:
    r = rollouts.start_rollout(clf.db, "clf", {"candidate": 2, "steps": [20, 100]})
    first = rollouts.advance(clf.db, r, {}, "passed", "a")
    second = rollouts.advance(clf.db, r, {}, "passed", "b")  # the same, stale, rollout
    assert first is not None and first.step == 1 and second is None
    policy = get_routing(clf.db, "clf")
    assert policy is not None and dict(policy.split) == {"2": 100}
    assert rollouts.finish(clf.db, r, "promoted", None, "stale", "b") is None


def test_promotion_moves_production_and_restores_the_prior_policy(clf: Registry) -> None:
    set_routing(clf.db, "clf", {"split": {"1": 1}, "sticky": "key"})
    r = rollouts.start_rollout(clf.db, "clf", {"candidate": 2, "steps": [100]})
    running = get_routing(clf.db, "clf")
    assert running is not None and running.sticky == "key"  # kept during the rollout
    done = rollouts.finish(clf.db, r, "promoted", {"x": 1}, "all good", "ctl")
    assert done is not None and done.state == "promoted" and done.finished_at is not None
    assert clf.list_aliases("clf")["production"] == 2
    history = clf.alias_history("clf", "production")
    assert history[-1].reason == f"rollout {r.id} promoted clf:2"
    after = get_routing(clf.db, "clf")
    assert after is not None and dict(after.split) == {"1": 1}
    # The model is free for the next rollout.
    assert rollouts.start_rollout(clf.db, "clf", {"candidate": 3}).baseline == 2


def test_a_rollback_or_cancel_sends_traffic_back_to_the_baseline(clf: Registry) -> None:
    r = rollouts.start_rollout(clf.db, "clf", {"candidate": 3})
    done = rollouts.finish(clf.db, r, "rolled_back", {"errors": 5}, "too many errors", "ctl")
    assert done is not None and get_routing(clf.db, "clf") is None
    assert clf.list_aliases("clf")["production"] == 1
    assert [e.action for e in done.events] == ["start", "rollback"]
    assert done.events[-1].figures == {"errors": 5}
    r2 = rollouts.start_rollout(clf.db, "clf", {"candidate": 3})
    cancelled = rollouts.cancel_rollout(clf.db, "clf", r2.id, actor="bob")
    assert cancelled.state == "cancelled" and cancelled.events[-1].actor == "bob"
    with pytest.raises(ConflictError, match="already ended"):
        rollouts.cancel_rollout(clf.db, "clf", r2.id, actor="bob")
    assert [x.id for x in rollouts.list_rollouts(clf.db, "clf")] == [r2.id, r.id]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"candidate": 9}, "candidate"),
        ({"candidate": 1}, "candidate"),  # already production
        ({"candidate": "two"}, "candidate"),
        ({"candidate": 2, "steps": [50, 20]}, "steps"),
        ({"candidate": 2, "steps": [0, 100]}, "steps"),
        ({"candidate": 2, "steps": []}, "steps"),
        ({"candidate": 2, "step_seconds": 0}, "step_seconds"),
        ({"candidate": 2, "criteria": {"max_p95_ratio": 0.5}}, "criteria"),
        ({"candidate": 2, "criteria": {"min_requests": 0}}, "criteria"),
        ({"candidate": 2, "criteria": {"accuracy": 1}}, "criteria"),
        ({"candidate": 2, "criteria": {"min_agreement": 1.5}}, "criteria"),
        ({"candidate": 2, "steps": [100], "criteria": {"min_agreement": 0.9}}, "criteria"),
        ({"candidate": 2, "speed": 1}, "speed"),
    ],
)
def test_a_bad_rollout_is_refused_naming_its_field(
    clf: Registry, body: dict[str, object], param: str
) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        rollouts.start_rollout(clf.db, "clf", body)
    assert caught.value.param == param
    assert get_routing(clf.db, "clf") is None


def test_a_model_without_production_cannot_start_a_rollout(clf: Registry) -> None:
    clf.delete_alias("clf", "production")
    with pytest.raises(ConflictError, match="production"):
        rollouts.start_rollout(clf.db, "clf", {"candidate": 2})


def test_figures_count_errors_but_not_the_callers_refusals(clf: Registry) -> None:
    start = utcnow()
    statuses = [200] * 16 + [400, 500] + [429, 401]
    with clf.db.write() as s:
        for i, status in enumerate(statuses):
            s.add(
                UsageRow(
                    ts=start + timedelta(milliseconds=i),
                    model="clf",
                    version=2,
                    route="infer",
                    status=status,
                    queue_seconds=0.001,
                    compute_seconds=0.01 * (i + 1),
                )
            )
        s.add(
            UsageRow(ts=start - timedelta(seconds=5), model="clf", version=2, route="i", status=500)
        )
    figures = version_figures(clf.db, "clf", 2, start)
    assert (figures.requests, figures.errors) == (18, 2)
    assert figures.p95_seconds == pytest.approx(0.001 + 0.01 * 16)  # the 16 successes
    assert version_figures(clf.db, "clf", 1, start).requests == 0
