"""Two-sample drift tests: is the current window drawn from the reference's distribution?

Each test returns a p-value (small = the two samples differ) and a statistic
that says by how much. The tests come from scipy; only the kernel statistic
is ours, and scipy's ``permutation_test`` turns it into a p-value.

* Continuous features (text length, tokens per character, confidence, vector
  norms): Kolmogorov-Smirnov (``scipy.stats.ks_2samp``). It needs no binning
  and no assumption about the shape; with ties (lengths are integers) it is
  conservative, which errs towards fewer false alarms.
* Categorical features (the predicted label): chi-square test of homogeneity
  on the 2 x K table of counts (``scipy.stats.chi2_contingency``), with the
  population stability index (PSI) as the effect size operators know.
* Vectors (embeddings): maximum mean discrepancy with an RBF kernel, p-value by
  permutation. MMD compares whole distributions in the embedding space — a
  shift of topic or language moves the cloud without necessarily moving any
  one coordinate or the norms. A classifier two-sample test (train a model to
  tell the windows apart) was the alternative; at a few hundred points per
  window it needs a fit per analysis and a held-out split, which costs more
  and leaves fewer points to decide with. The permutation statistic here is a
  quadratic form ``s' K s`` over the pooled kernel matrix, so a batch of
  permutations is one matrix product (~0.1 s for 2000 permutations of 2 x 200
  points on one core).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


def _stats() -> Any:
    """scipy.stats, imported at the first analysis: every HTTP worker imports this module,
    and scipy.stats adds ~60 MB to a process that may never analyse anything."""
    from scipy import stats  # type: ignore[import-untyped]

    return stats


# Vectors compared by MMD: each window is subsampled to this many (the kernel matrix
# is (2n)^2 floats; 200 points per side detect a shift of topic or language easily).
MMD_MAX_POINTS = 200


@dataclass(frozen=True, slots=True)
class TestOutcome:
    test: str  # "ks", "chi2", "mmd"
    statistic: float
    p_value: float
    effect: float | None = None  # PSI for labels

    def as_dict(self) -> dict[str, Any]:
        return {
            "test": self.test,
            "statistic": _finite(self.statistic),
            "p_value": _finite(self.p_value),
            "effect": _finite(self.effect) if self.effect is not None else None,
        }


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def ks_test(reference: np.ndarray, current: np.ndarray) -> TestOutcome:
    """Kolmogorov-Smirnov on two 1-D samples."""
    # scipy's "auto" tries the exact distribution up to 10000 points a side and warns when
    # it fails (large samples with ties): ask for the asymptotic one past its own bound.
    method = "exact" if len(reference) * len(current) < 10_000 else "asymp"
    result = _stats().ks_2samp(reference, current, method=method)
    return TestOutcome("ks", float(result.statistic), float(result.pvalue))


def label_test(reference: Sequence[str], current: Sequence[str]) -> TestOutcome:
    """Chi-square homogeneity of two label samples, and their PSI."""
    categories = sorted(set(reference) | set(current))
    ref_counts = np.array([sum(1 for x in reference if x == c) for c in categories], float)
    cur_counts = np.array([sum(1 for x in current if x == c) for c in categories], float)
    psi = _psi(ref_counts, cur_counts)
    if len(categories) < 2:  # one label on both sides: nothing changed
        return TestOutcome("chi2", 0.0, 1.0, psi)
    result = _stats().chi2_contingency(np.stack([ref_counts, cur_counts]))
    return TestOutcome("chi2", float(result.statistic), float(result.pvalue), psi)


def _psi(ref_counts: np.ndarray, cur_counts: np.ndarray) -> float:
    # Half a count added to every cell so that a label absent from one side stays finite.
    p = (ref_counts + 0.5) / (ref_counts.sum() + 0.5 * len(ref_counts))
    q = (cur_counts + 0.5) / (cur_counts.sum() + 0.5 * len(cur_counts))
    return float(np.sum((q - p) * np.log(q / p)))


def mmd_test(
    reference: np.ndarray,
    current: np.ndarray,
    *,
    permutations: int = 1999,
    seed: int = 0,
) -> TestOutcome:
    """MMD² between two samples of vectors, (n, d) and (m, d); p-value by permutation.

    The RBF bandwidth is the median pairwise squared distance of the pooled
    sample, fixed before permuting (so every permutation is scored with the same
    kernel and the test stays exact). The smallest p-value it can report is
    ``1 / (permutations + 1)``.
    """
    rng = np.random.default_rng(seed)
    x = _subsample(reference, rng)
    y = _subsample(current, rng)
    pooled = np.concatenate([x, y]).astype(np.float64)  # (N, d), N = n + m
    squared = np.sum(pooled * pooled, axis=1)
    distances = np.maximum(squared[:, None] + squared[None, :] - 2 * pooled @ pooled.T, 0)
    upper = distances[np.triu_indices(len(pooled), k=1)]
    bandwidth = float(np.median(upper)) if upper.size else 1.0
    kernel = np.exp(-distances / (bandwidth if bandwidth > 0 else 1.0))  # (N, N)
    n, m = len(x), len(y)

    def mmd2(ix: np.ndarray, iy: np.ndarray, axis: int = -1) -> np.ndarray:
        # ix (..., n), iy (..., m): indices into the pooled sample. s holds 1/n on the
        # first sample's rows and -1/m on the second's, so s' K s is the (biased) MMD².
        ix = np.asarray(ix, dtype=np.intp)
        iy = np.asarray(iy, dtype=np.intp)
        batch = ix.shape[:-1]
        s = np.zeros((*batch, n + m))
        np.put_along_axis(s, ix, 1.0 / n, axis=-1)
        np.put_along_axis(s, iy, -1.0 / m, axis=-1)
        return np.asarray(np.sum((s @ kernel) * s, axis=-1))

    result = _stats().permutation_test(
        (np.arange(n), np.arange(n, n + m)),
        mmd2,
        permutation_type="independent",
        vectorized=True,
        n_resamples=permutations,
        alternative="greater",
        batch=256,
        rng=rng,
    )
    return TestOutcome("mmd", float(result.statistic), float(result.pvalue))


def _subsample(vectors: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if len(vectors) <= MMD_MAX_POINTS:
        return vectors
    return vectors[rng.choice(len(vectors), MMD_MAX_POINTS, replace=False)]
