"""World-model metrics: AUROC, AUPRC and ECE against hand-computed values."""

import math

import numpy as np
import pytest

from world_model.metrics import auprc, auroc, average_ranks, ece, mae


def test_auroc_hand_computed():
    # pairs (pos, neg): (0.35 vs 0.1) win, (0.35 vs 0.4) loss, (0.8 vs 0.1) win, (0.8 vs 0.4) win -> 3/4
    assert auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert auroc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)  # a tie counts one half
    # 1 positive at 0.5 vs negatives 0.5 (tie), 0.2 (win), 0.9 (loss) -> (0.5 + 1 + 0) / 3
    assert auroc([1, 0, 0, 0], [0.5, 0.5, 0.2, 0.9]) == pytest.approx(0.5)
    assert auroc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert auroc([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4]) == 0.0
    assert math.isnan(auroc([1, 1], [0.2, 0.3]))


def test_auprc_hand_computed():
    # ranked: 0.8 (+) P=1 R=.5; 0.4 (-); 0.35 (+) P=2/3 R=1  ->  0.5 * 1 + 0.5 * 2/3
    assert auprc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.5 + 1 / 3)
    # a tie is one threshold: both rows enter together, P = 1/2 at R = 1
    assert auprc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)
    assert auprc([0, 1, 1], [0.1, 0.7, 0.9]) == pytest.approx(1.0)
    assert math.isnan(auprc([0, 0], [0.1, 0.2]))


def test_ece_hand_computed():
    # bin 1: p=.1,.15 (acc .5, conf .125) -> .5 * .375 ; bin 8: .25 * .2 ; bin 9: .25 * .1
    assert ece([0, 1, 1, 1], [0.1, 0.15, 0.8, 0.9]) == pytest.approx(0.1875 + 0.05 + 0.025)
    assert ece([0, 1], [0.0, 1.0]) == pytest.approx(0.0)  # p = 1.0 falls in the top bin
    assert ece([1, 1, 0, 0], [0.5, 0.5, 0.5, 0.5]) == pytest.approx(0.0)
    assert ece([1, 0], [0.3, 0.3], n_bins=2) == pytest.approx(0.2)


def test_ranks_and_errors():
    np.testing.assert_allclose(average_ranks(np.array([3.0, 1.0, 3.0, 2.0])), [3.5, 1, 3.5, 2])
    assert mae([1, 2], [2, 4]) == pytest.approx(1.5)
    with pytest.raises(ValueError, match="length"):
        auroc([0, 1], [0.1])
    with pytest.raises(ValueError, match="0 or 1"):
        auroc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="finite"):
        auprc([0, 1], [0.1, np.nan])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ece([0, 1], [0.1, 1.2])


def test_auroc_matches_pairwise_definition_on_random_data():
    rng = np.random.default_rng(0)
    y = rng.random(200) < 0.3
    s = np.round(rng.random(200), 1)  # many ties
    pos, neg = s[y], s[~y]
    pairs = (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()
    assert auroc(y, s) == pytest.approx(pairs)
