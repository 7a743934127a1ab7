"""The drift tests on samples whose answer is known."""

from __future__ import annotations

import numpy as np

from maas.serving.monitoring_stats import ks_test, label_test, mmd_test


def unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_ks_tells_a_shifted_sample_from_a_resample_of_the_same() -> None:
    rng = np.random.default_rng(0)
    same = ks_test(rng.normal(size=300), rng.normal(size=300))
    shifted = ks_test(rng.normal(size=300), rng.normal(loc=0.5, size=300))
    assert same.p_value > 0.01
    assert shifted.p_value < 1e-6


def test_label_test_detects_a_changed_label_mix_and_reports_its_psi() -> None:
    same = label_test(["a", "b"] * 100, ["a", "b"] * 100)
    changed = label_test(["a", "b"] * 100, ["a"] * 180 + ["b"] * 20)
    assert same.p_value > 0.5 and abs(same.effect or 0) < 1e-9
    assert changed.p_value < 1e-10 and (changed.effect or 0) > 0.25


def test_label_test_of_one_label_on_both_sides_finds_nothing() -> None:
    assert label_test(["a"] * 10, ["a"] * 10).p_value == 1.0


def test_a_label_never_seen_in_the_reference_counts_as_drift() -> None:
    assert label_test(["a", "b"] * 50, ["a", "b", "c", "c"] * 25).p_value < 1e-6


def test_mmd_finds_a_moved_embedding_cloud_and_not_a_resample() -> None:
    rng = np.random.default_rng(1)
    ref = unit(rng.normal(size=(200, 64)))
    same = mmd_test(ref, unit(rng.normal(size=(200, 64))), permutations=999)
    moved = mmd_test(ref, unit(rng.normal(loc=0.15, size=(200, 64))), permutations=999)
    assert same.p_value > 0.01
    assert moved.p_value <= 0.001  # the smallest p-value 999 permutations can give


def test_mmd_is_deterministic_for_a_seed() -> None:
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(50, 8)), rng.normal(size=(50, 8))
    assert mmd_test(a, b, permutations=199, seed=3) == mmd_test(a, b, permutations=199, seed=3)
