"""The detector's statistics, from scipy and statsmodels (nothing hand-written):

* a rise in a label's share: Fisher's exact test, one-sided (:func:`scipy.stats.fisher_exact`,
  ``alternative="greater"``), of the window's posts against the baseline's, that label against
  the others. Exact, because the windows that matter hold 20-40 posts and the decision is made
  far in the tail (p around 1e-6), where the normal approximation of a score or z test is
  anti-conservative: on synthetic no-change days the score test put p = 6e-7 on 12 negative
  posts of 21 against a baseline of 38 of 258, which Fisher's test puts at 3e-5;
* a rise in volume: the exact conditional test of two Poisson rates, one-sided
  (:func:`statsmodels.stats.rates.test_poisson_2indep`, ``method="exact-cond"``: given the
  window's and the baseline's posts together, the window's count is binomial in the share of
  exposure the window has);
* false alarms across the scopes and kinds tested in one window: Benjamini-Hochberg
  (:func:`statsmodels.stats.multitest.multipletests`, ``method="fdr_bh"``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

SHARE_TEST = "Fisher's exact test, one-sided (scipy fisher_exact), Benjamini-Hochberg over the window"
VOLUME_TEST = "exact conditional Poisson rate test, one-sided (statsmodels test_poisson_2indep), Benjamini-Hochberg over the window"


def _clean(p: float | None) -> float:
    return 1.0 if p is None or math.isnan(p) else min(1.0, max(0.0, float(p)))


def share_pvalues(counts: Sequence[int], nobs: Sequence[int], base_counts: Sequence[int], base_nobs: Sequence[int]) -> list[float]:
    """P-values that each window's share ``counts / nobs`` is larger than its baseline's: Fisher's
    exact test of the 2x2 table (window / baseline x label / other labels), one-sided."""
    from scipy.stats import fisher_exact

    out = []
    for k, n, k0, n0 in zip(counts, nobs, base_counts, base_nobs):
        out.append(_clean(fisher_exact([[k, n - k], [k0, n0 - k0]], alternative="greater").pvalue))
    return out


def volume_pvalues(counts: Sequence[int], exposure_s: Sequence[float], base_counts: Sequence[int],
                   base_exposure_s: Sequence[float]) -> list[float]:  # fmt: skip
    """P-values that each window's rate ``counts / exposure_s`` is larger than its baseline's."""
    if not len(counts):
        return []
    import numpy as np
    from statsmodels.stats.rates import test_poisson_2indep

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = test_poisson_2indep(np.asarray(counts), np.asarray(exposure_s, dtype=float), np.asarray(base_counts),
                                  np.asarray(base_exposure_s, dtype=float), method="exact-cond", alternative="larger")  # fmt: skip
    return [_clean(p) for p in np.atleast_1d(res.pvalue)]


def bh(pvalues: Sequence[float], fdr: float) -> tuple[list[bool], list[float]]:
    """Benjamini-Hochberg: which hypotheses are rejected at ``fdr``, and the adjusted p-values."""
    if not pvalues:
        return [], []
    from statsmodels.stats.multitest import multipletests

    reject, adjusted, _, _ = multipletests(list(pvalues), alpha=fdr, method="fdr_bh")
    return [bool(r) for r in reject], [_clean(q) for q in adjusted]


__all__ = ["share_pvalues", "volume_pvalues", "bh", "SHARE_TEST", "VOLUME_TEST"]
