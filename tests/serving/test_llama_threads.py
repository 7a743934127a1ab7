"""The decode loop's thread policy, driven by step times of a simulated machine."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from maas.serving.llama_threads import IdleMeter, ThreadPolicy

StepTime = Callable[[int], float]


def run(policy: ThreadPolicy, steps: int, step_time: StepTime, key: int | None = 8) -> list[int]:
    """Run ``steps`` decode steps of one key; the thread count each step used."""
    used = []
    for _ in range(steps):
        threads = policy.threads_for(key)
        policy.record(key, threads, step_time(threads))
        used.append(threads)
    return used


def quiet(threads: int) -> float:
    return {1: 0.012, 2: 0.008}[threads]  # two threads 1.5x faster


def contended(threads: int) -> float:
    return {1: 0.013, 2: 0.090}[threads]  # the second thread waits at every barrier


def test_starts_on_the_safe_count_and_takes_the_last_core_when_it_measures_faster() -> None:
    policy = ThreadPolicy(1, 2)
    used = run(policy, 40, quiet)
    assert used[0] == 1
    assert policy.current == 2 and policy.switches == 1
    # After the switch only the re-check of one window runs on one thread.
    assert used[-20:].count(2) >= 20 - policy.window


def test_leaves_the_last_core_as_soon_as_something_else_competes_for_it() -> None:
    policy = ThreadPolicy(1, 2)
    run(policy, 40, quiet)
    assert policy.current == 2
    used = run(policy, 12, contended)
    # The collapse guard probes after one window of slow steps; the probe wins.
    assert policy.current == 1
    assert used.count(2) <= policy.window + 1


def test_a_losing_probe_costs_one_slow_step_and_backs_off() -> None:
    policy = ThreadPolicy(1, 2, interval=16, max_interval=128)
    used = run(policy, 600, contended)
    assert policy.current == 1 and policy.switches == 0
    probes = used.count(2)
    # Probes at 16+4, then every 32, 64, 128, 128 ... steps: one slow step each.
    assert 3 <= probes <= 8
    assert policy.interval == 128


def test_returns_to_all_cores_when_the_competition_stops() -> None:
    policy = ThreadPolicy(1, 2, max_interval=64)
    run(policy, 300, contended)
    assert policy.current == 1
    run(policy, 200, quiet)
    assert policy.current == 2


def test_keeps_the_count_when_the_other_is_not_clearly_faster() -> None:
    policy = ThreadPolicy(1, 2, margin=0.05)
    run(policy, 200, lambda threads: {1: 0.0100, 2: 0.0098}[threads])
    assert policy.current == 1 and policy.switches == 0


def test_a_probe_is_abandoned_when_the_batch_changes_under_it() -> None:
    policy = ThreadPolicy(1, 2, interval=4)
    run(policy, 4, quiet, key=8)  # the window is full and the interval passed
    assert policy.probing
    threads = policy.threads_for(9)  # a sequence joined: steps are no longer comparable
    assert threads == 1 and not policy.probing and policy.switches == 0


def test_prompt_steps_are_never_compared() -> None:
    policy = ThreadPolicy(1, 2, interval=1)
    used = run(policy, 50, quiet, key=None)
    assert set(used) == {1} and not policy.probing


def test_one_core_or_a_fixed_count_never_changes() -> None:
    for policy in (ThreadPolicy(1, 1), ThreadPolicy(3, 3)):
        used = run(policy, 100, lambda threads: 0.01)
        assert set(used) == {policy.low} and policy.fixed


def test_never_tries_the_last_core_while_something_else_uses_it() -> None:
    policy = ThreadPolicy(1, 2, spare=lambda: 0.2)
    used = run(policy, 500, quiet)
    assert set(used) == {1}


def test_one_collapsed_step_on_all_cores_is_the_last() -> None:
    policy = ThreadPolicy(1, 2)
    run(policy, 40, quiet)
    assert policy.current == 2
    used = run(policy, 3, contended)
    assert used == [2, 1, 1] and policy.current == 1


def test_idle_meter_reads_idle_cores_from_proc_stat(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 0 100 800 0 0 0 0 0 0\ncpu0 1 2 3\n")
    meter = IdleMeter(str(stat))
    meter.cores = 2
    # 400 ticks pass, 100 of them idle: a quarter of two cores.
    stat.write_text("cpu  250 0 250 900 0 0 0 0 0 0\n")
    assert meter() == 0.5
    assert meter() == 0.0  # no tick since: unknown counts as busy


def test_idle_meter_without_proc_stat_says_busy(tmp_path: Path) -> None:
    assert IdleMeter(str(tmp_path / "missing"))() == 0.0
