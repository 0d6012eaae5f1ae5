"""Bootstrap confidence intervals for EER and minDCF, resampling targets and non-targets apart.

Each replicate draws ``n_targets`` targets and ``n_nontargets`` non-targets with replacement. Since
every metric depends on the trials only through the counts per distinct score, a replicate is two
multinomial draws over the distinct scores: no per-trial work and no new sort.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from tqdm import tqdm

from speakertrip.scoring.metrics import eer_from_points, min_dcf_from_points
from speakertrip.scoring.operating_points import OperatingPoints, ScoreGroups


def bootstrap_intervals(groups: ScoreGroups, p_targets: Sequence[float] = (0.01, 0.05), c_miss: float = 1.0,
                        c_fa: float = 1.0, resamples: int = 1000, confidence: float = 0.95,
                        seed: int = 0) -> dict:
    """Percentile intervals ``{"eer": (low, high), "min_dcf": {p_target: (low, high)}}``.

    Parameters
    ----------
    groups : the trials grouped by distinct score (``ScoreGroups.from_scores``).
    resamples : number of bootstrap replicates (at least 2).
    confidence : coverage of the interval, e.g. 0.95 for the 2.5 % and 97.5 % percentiles.
    seed : seeds the generator, so the same call gives the same interval.
    """
    if resamples < 2 or not 0.0 < confidence < 1.0:
        raise ValueError(f"need resamples >= 2 and 0 < confidence < 1, got {resamples} and {confidence}")
    rng = np.random.default_rng(seed)
    n_tar, n_non = groups.n_targets, groups.n_nontargets
    target_share, nontarget_share = groups.targets / n_tar, groups.nontargets / n_non
    eers = np.empty(resamples)
    dcfs = {p: np.empty(resamples) for p in p_targets}
    for i in tqdm(range(resamples), desc="bootstrap", unit="replicate", leave=False, disable=resamples < 50):
        replicate = ScoreGroups(groups.values, rng.multinomial(n_tar, target_share),
                                rng.multinomial(n_non, nontarget_share))
        points = OperatingPoints.from_groups(replicate)
        eers[i] = eer_from_points(points)[0]
        for p in p_targets:
            dcfs[p][i] = min_dcf_from_points(points, p, c_miss, c_fa)[0]
    tails = [(1 - confidence) / 2, (1 + confidence) / 2]

    def interval(values: np.ndarray) -> tuple[float, float]:
        low, high = np.quantile(values, tails)
        return float(low), float(high)

    return {"eer": interval(eers), "min_dcf": {p: interval(values) for p, values in dcfs.items()}}
