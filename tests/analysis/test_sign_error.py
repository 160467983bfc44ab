"""analysis.sign_error on a hand-built zoo whose sign-errors are counted pair by pair in the comments."""
import doctest

import numpy as np
import pandas as pd
import pytest

from analysis import sign_error
from analysis.correlations import correlation_table
from analysis.sign_error import environment_sign_errors, summarize_sign_errors


def test_docstring_examples_run():
    failures, tried = doctest.testmod(sign_error, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert tried >= 1 and failures == 0


def hand_zoo():
    """lr ∈ {1, 2} × bs ∈ {a, b}, 2 seeds each; one extra model with a NaN measure (left out).

    Environments and their cross pairs (gap: measure):
    - lr at bs a, 1a {1: 1, 2: 2} vs 2a {3: 3, 4: 0}: 1-3 right, 1-4 wrong, 2-3 right, 2-4 wrong -> 2/4 = 0.5
    - lr at bs b, 1b {5: 5, 6: 5} vs 2b {7: 3, 8: 9}: 5-7 wrong, 5-8 right, 6-7 wrong, 6-8 right -> 0.5
    - bs at lr 1, 1a vs 1b: every measure of 1a is below every one of 1b, as the gaps -> 0
    - bs at lr 2, 2a vs 2b: 3-7 tied measure (3, 3) -> ½, the other three right -> 0.5/4 = 0.125
    1a vs 2b differ in both axes: not an environment.
    """
    rows = [("1", "a", 0, 1, 1), ("1", "a", 1, 2, 2), ("2", "a", 0, 3, 3), ("2", "a", 1, 4, 0),
            ("1", "b", 0, 5, 5), ("1", "b", 1, 6, 5), ("2", "b", 0, 7, 3), ("2", "b", 1, 8, 9),
            ("2", "b", 2, 9, np.nan)]
    return pd.DataFrame(rows, columns=["lr", "bs", "seed", "gap", "mu"]).astype({"gap": float, "mu": float})


def test_environment_sign_errors_by_hand():
    environments = environment_sign_errors(hand_zoo(), "mu", "gap", ["lr", "bs"])
    assert len(environments) == 4
    assert list(environments["axis"]) == ["lr", "lr", "bs", "bs"]
    assert list(environments["n_pairs"]) == [4, 4, 4, 4]
    assert list(environments["sign_error"]) == pytest.approx([0.5, 0.5, 0.0, 0.125])


def test_summary_mean_q90_max_by_hand():
    summary = summarize_sign_errors(environment_sign_errors(hand_zoo(), "mu", "gap", ["lr", "bs"]), ["lr", "bs"])
    assert summary["lr"] == pytest.approx({"sign_error_mean": 0.5, "sign_error_q90": 0.5, "sign_error_max": 0.5,
                                           "n_environments": 2})
    # bs: [0, 0.125]; the 90% quantile interpolates 0.9 of the way: 0.1125
    assert summary["bs"] == pytest.approx({"sign_error_mean": 0.0625, "sign_error_q90": 0.1125,
                                           "sign_error_max": 0.125, "n_environments": 2})
    # all: [0, 0.125, 0.5, 0.5]: mean 1.125/4; the 90% quantile sits at position 2.7, between the two 0.5s
    assert summary["all"] == pytest.approx({"sign_error_mean": 0.28125, "sign_error_q90": 0.5,
                                            "sign_error_max": 0.5, "n_environments": 4})


def test_perfect_and_reversed_measures_and_no_environment():
    zoo = hand_zoo().assign(mu=lambda d: d["gap"])
    assert environment_sign_errors(zoo, "mu", "gap", ["lr", "bs"])["sign_error"].eq(0).all()
    zoo = zoo.assign(mu=lambda d: -d["gap"])
    assert environment_sign_errors(zoo, "mu", "gap", ["lr", "bs"])["sign_error"].eq(1).all()
    summary = summarize_sign_errors(environment_sign_errors(zoo.iloc[:2], "mu", "gap", ["lr"]), ["lr"])
    assert np.isnan(summary["all"]["sign_error_mean"]) and summary["all"]["n_environments"] == 0


def test_sign_error_rows_of_the_correlation_table():
    zoo = hand_zoo()
    models = zoo.assign(run_id=[f"r{i}" for i in range(len(zoo))], status="done", reached_target=True, width=8,
                        batch_size=zoo["bs"], gap_loss=zoo["gap"]).drop(columns=["bs", "gap", "mu"])
    measures = pd.DataFrame({"run_id": models["run_id"], "mu": zoo["mu"]})
    table = correlation_table(models, measures, n_boot=10).set_index(["statistic", "axis"])
    assert table.loc[("sign_error_mean", "lr"), "value"] == pytest.approx(0.5)
    assert table.loc[("sign_error_max", "batch_size"), "value"] == pytest.approx(0.125)
    assert table.loc[("sign_error_q90", "all"), "value"] == pytest.approx(0.5)
    assert table.loc[("sign_error_mean", "all"), "n_groups"] == 4
    assert table.loc[("sign_error_mean", "all"), "n_models"] == 8
