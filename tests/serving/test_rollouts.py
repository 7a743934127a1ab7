"""The rollout controller's judgement, and its ticks over a real registry and audit log."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import pytest

from maas.registry import rollouts
from maas.registry.models import UsageRow, utcnow
from maas.registry.rollout_figures import Figures
from maas.registry.rollout_plan import Criteria, Plan
from maas.registry.rollouts import Rollout
from maas.registry.store import Registry
from maas.security.audit import AuditLog
from maas.serving.rollouts import RolloutController, judge


def _rollout(step: int = 0, *, age: float = 0.0, steps: tuple[int, ...] = (10, 100)) -> Rollout:
    started = utcnow() - timedelta(seconds=age)
    return Rollout(
        id=1,
        model="m",
        candidate=2,
        baseline=1,
        plan=Plan(steps, 60.0, Criteria(0.01, 1.5, 20)),
        state="running",
        step=step,
        step_started_at=started,
        created_at=started,
        created_by=None,
        origin=None,
        finished_at=None,
        reason=None,
    )


HEALTHY = Figures(100, 0, 0.010)


def test_errors_roll_back_mid_step_once_there_are_enough_requests() -> None:
    assert judge(_rollout(), Figures(19, 19, 0.01), HEALTHY, utcnow()).action == "wait"
    verdict = judge(_rollout(), Figures(20, 4, 0.01), HEALTHY, utcnow())
    assert verdict.action == "rollback"
    assert "error rate 20.0% of 20 requests" in verdict.reason
    assert verdict.figures["candidate"] == {
        "version": 2,
        "requests": 20,
        "errors": 4,
        "error_rate": 0.2,
        "p95_seconds": 0.01,
    }


def test_errors_the_baseline_makes_as_well_are_not_held_against_the_candidate() -> None:
    verdict = judge(_rollout(age=61), Figures(100, 5, 0.01), Figures(100, 5, 0.01), utcnow())
    assert verdict.action == "advance"


def test_a_step_passes_only_when_its_time_is_up_and_it_had_enough_traffic() -> None:
    assert judge(_rollout(age=10), HEALTHY, HEALTHY, utcnow()).action == "wait"
    waiting = judge(_rollout(age=61), Figures(5, 0, 0.01), HEALTHY, utcnow())
    assert waiting.action == "wait" and "5 of 20" in waiting.reason
    assert judge(_rollout(age=61), HEALTHY, HEALTHY, utcnow()).action == "advance"
    assert judge(_rollout(1, age=61), HEALTHY, HEALTHY, utcnow()).action == "promote"


def test_a_slow_candidate_is_rolled_back_at_the_end_of_its_step() -> None:
    slow = Figures(100, 0, 0.030)
    verdict = judge(_rollout(age=61), slow, HEALTHY, utcnow())
    assert verdict.action == "rollback" and "3.00x" in verdict.reason
    # Without enough baseline requests to compare with, latency is not judged.
    assert judge(_rollout(age=61), slow, Figures(3, 0, 0.01), utcnow()).action == "advance"


def test_agreement_below_the_bar_rolls_back_and_too_few_comparisons_wait() -> None:
    agreeing = _rollout(age=61)
    agreeing = Rollout(
        **{
            **{f: getattr(agreeing, f) for f in Rollout.__slots__ if f != "plan"},
            "plan": Plan((10, 100), 60.0, Criteria(0.01, 1.5, 20, 0.9)),
        }
    )
    low = judge(agreeing, HEALTHY, HEALTHY, utcnow(), (15, 20))
    assert low.action == "rollback" and "75.0%" in low.reason
    assert low.figures["agreement"] == {"agreed": 15, "compared": 20, "rate": 0.75}
    few = judge(agreeing, HEALTHY, HEALTHY, utcnow(), (5, 5))
    assert few.action == "wait" and "5 of 20 mirrored items" in few.reason
    assert judge(agreeing, HEALTHY, HEALTHY, utcnow(), (19, 20)).action == "advance"


@pytest.fixture
def clf(registry: Registry, hf_dir: Path) -> Registry:
    for _ in range(2):
        registry.push(hf_dir, "clf", task="text-classification")
    return registry


def _usage(registry: Registry, version: int, statuses: list[int]) -> None:
    now = utcnow()
    with registry.db.write() as s:
        for status in statuses:
            s.add(
                UsageRow(
                    ts=now,
                    model="clf",
                    version=version,
                    route="infer",
                    status=status,
                    compute_seconds=0.01,
                )
            )


def test_a_tick_rolls_back_a_failing_candidate_and_audits_why(clf: Registry) -> None:
    audit = AuditLog(clf.db)
    controller = RolloutController(clf.db, audit)
    r = rollouts.start_rollout(clf.db, "clf", {"candidate": 2, "criteria": {"min_requests": 10}})
    _usage(clf, 1, [200] * 50)
    _usage(clf, 2, [200] * 8 + [500] * 2)
    assert [m.state for m in controller.tick()] == ["rolled_back"]
    assert controller.tick() == []  # nothing left running
    done = rollouts.get_rollout(clf.db, "clf", r.id)
    assert done.events[-1].action == "rollback" and "20.0%" in done.events[-1].reason
    entry = audit.list(limit=10)[0]
    assert entry.action == "rollout.rollback" and entry.target == f"clf/rollouts/{r.id}"
    assert entry.details["figures"]["candidate"]["errors"] == 2
    assert clf.list_aliases("clf")["production"] == 1


def test_ticks_walk_a_healthy_candidate_to_promotion(clf: Registry) -> None:
    controller = RolloutController(clf.db, AuditLog(clf.db))
    body = {
        "candidate": 2,
        "steps": [50, 100],
        "step_seconds": 0.05,
        "criteria": {"min_requests": 5},
    }
    r = rollouts.start_rollout(clf.db, "clf", body)
    _usage(clf, 1, [200] * 10)
    _usage(clf, 2, [200] * 10)
    time.sleep(0.06)  # the step's time is up
    assert [(m.state, m.step) for m in controller.tick()] == [("running", 1)]
    assert controller.tick() == []  # the new step has no candidate traffic yet
    _usage(clf, 2, [200] * 10)
    time.sleep(0.06)
    [done] = controller.tick()
    assert done.state == "promoted" and done.id == r.id
    assert [e.action for e in done.events] == ["start", "advance", "promote"]
    assert clf.list_aliases("clf")["production"] == 2
