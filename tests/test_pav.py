"""PAV blocks (scoring.cllr.pav_blocks, behind minCllr and ROCCH-EER) against scikit-learn's isotonic regression."""

import numpy as np
from sklearn.isotonic import isotonic_regression

from speakertrip.scoring.cllr import pav_blocks
from speakertrip.scoring.operating_points import ScoreGroups


def test_pav_blocks_equal_scikit_learns_weighted_isotonic_regression():
    rng = np.random.default_rng(0)
    for case in range(200):
        n = int(rng.integers(1, 200))
        targets, nontargets = rng.integers(0, 4, n), rng.integers(0, 4, n)
        nontargets[targets + nontargets == 0] = 1
        groups = ScoreGroups(np.sort(rng.standard_normal(n)), targets, nontargets)
        sizes = targets + nontargets
        fitted = isotonic_regression(targets / sizes, sample_weight=sizes.astype(np.float64), increasing=True)
        starts = np.concatenate(([0], np.flatnonzero(np.diff(fitted) > 1e-12) + 1))  # where the fit rises
        blocks = pav_blocks(groups)
        np.testing.assert_array_equal(blocks.values, groups.values[starts], err_msg=f"case {case}")
        np.testing.assert_array_equal(blocks.targets, np.add.reduceat(targets, starts))
        np.testing.assert_array_equal(blocks.nontargets, np.add.reduceat(nontargets, starts))
        fractions = blocks.targets / (blocks.targets + blocks.nontargets)
        assert np.all(np.diff(fractions) > 0)  # strictly rising, as the docstring says
