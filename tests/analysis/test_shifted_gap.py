"""analysis.shifted_gap: Ψ on the two gaps side by side, ranks, and Kendall τ between the two rankings."""
import math

import numpy as np
import pandas as pd
import pytest

from analysis.shifted_gap import compare_gaps


def long_table(rows):
    """A long correlation table from (width, measure, Ψ, ci_low, ci_high, n_models), plus a τ row each that must be
    ignored."""
    psi = pd.DataFrame(rows, columns=["width", "measure", "value", "ci_low", "ci_high", "n_models"])
    psi = psi.assign(statistic="Psi", axis="all")
    tau = psi.assign(statistic="tau", value=-psi["value"])
    return pd.concat([tau, psi], ignore_index=True)


def test_columns_ranks_and_agreement_by_hand():
    iid = long_table([(8, "a", 0.5, 0.1, 0.9, 12), (8, "b", 0.3, 0.0, 0.6, 12), (8, "c", 0.1, -0.2, 0.4, 12),
                      (8, "d", 0.1, -0.3, 0.5, 12), (16, "a", 0.2, 0.0, 0.4, 10), (16, "b", np.nan, np.nan, np.nan, 0)])
    shifted = long_table([(8, "a", 0.0, -0.1, 0.1, 11), (8, "b", 0.4, 0.2, 0.6, 11), (8, "c", 0.2, 0.1, 0.3, 11),
                          (8, "d", 0.3, 0.0, 0.5, 11), (16, "a", 0.1, -0.1, 0.3, 10), (16, "b", 0.3, 0.1, 0.5, 10)])
    result = compare_gaps(iid, shifted)
    table = result.table.set_index(["width", "measure"])
    assert table.loc[(8, "a"), ["Psi_gap_loss", "ci_low_gap_loss", "ci_high_gap_loss", "n_models_gap_loss"]
                     ].tolist() == [0.5, 0.1, 0.9, 12]
    assert table.loc[(8, "a"), ["Psi_gap_shift", "ci_low_gap_shift", "ci_high_gap_shift", "n_models_gap_shift"]
                     ].tolist() == [0.0, -0.1, 0.1, 11]
    # ranks: 1 = largest Ψ; ties share the better rank
    assert table.loc[8, "rank_gap_loss"].tolist() == [1, 2, 3, 3]
    assert table.loc[8, "rank_gap_shift"].tolist() == [4, 1, 3, 2]
    assert table.loc[16, "rank_gap_loss"].tolist()[0] == 1 and math.isnan(table.loc[(16, "b"), "rank_gap_loss"])
    # width 8, iid (0.5, 0.3, 0.1, 0.1) vs shifted (0, 0.4, 0.2, 0.3): pairs ab, ac, ad discordant; bc, bd
    # concordant; cd tied in iid. τ-b = (2 − 3) / sqrt(5 · 6)
    assert result.agreement[8] == pytest.approx(-1 / math.sqrt(30))
    assert result.n_measures == {8: 4, 16: 1}
    assert math.isnan(result.agreement[16])            # one measure with Ψ on both gaps: nothing to rank


def test_identical_gaps_agree_perfectly():
    rows = [(32, m, v, v - 0.1, v + 0.1, 20) for m, v in zip("abcde", (0.4, -0.2, 0.1, 0.3, 0.0))]
    result = compare_gaps(long_table(rows), long_table(rows))
    assert result.agreement == {32: pytest.approx(1.0)}
    assert (result.table["rank_gap_loss"] == result.table["rank_gap_shift"]).all()


def test_docstring_example():
    import doctest
    from analysis import shifted_gap
    failures, tried = doctest.testmod(shifted_gap)
    assert failures == 0 and tried >= 3
