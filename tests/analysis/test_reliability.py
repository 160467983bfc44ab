"""analysis.reliability on a hand-made zoo: 4 configurations (lr × bs) × 2 seeds, every figure computed by hand."""
import doctest

import numpy as np
import pandas as pd
import pytest

from analysis import reliability
from analysis.correlations import analysis_input
from analysis.reliability import RELIABILITY_COLUMNS, reliability_table, seed_share


def test_docstring_examples_run():
    failures, tried = doctest.testmod(reliability, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert tried >= 1 and failures == 0


def hand_zoo(seeds=(0, 1)):
    """Gaps per configuration (lr1 a, lr2 a, lr1 b, lr2 b): seed 0 (1, 2, 3, 4), seed 1 (2, 1, 3, 5).
    Measures: ``same`` = gap, ``against`` = −gap, ``flip`` = gap at seed 0 and −gap at seed 1."""
    gaps = {0: [1.0, 2.0, 3.0, 4.0], 1: [2.0, 1.0, 3.0, 5.0]}
    rows = []
    for seed in seeds:
        for k, (lr, bs) in enumerate([(1, "a"), (2, "a"), (1, "b"), (2, "b")]):
            rows.append({"run_id": f"s{seed}c{k}", "lr": lr, "batch_size": bs, "seed": seed, "width": 8,
                         "status": "done", "reached_target": True, "gap_loss": gaps[seed][k]})
    models = pd.DataFrame(rows)
    gap = models["gap_loss"]
    measures = pd.DataFrame({"run_id": models["run_id"], "same": gap, "against": -gap,
                             "flip": np.where(models["seed"] == 0, gap, -gap)})
    return models, measures


def test_seed_share_by_hand():
    # configuration means 1.5, 1.5, 3, 4.5: within SS = 6 × 0.25 = 1.5; grand mean 21/8, total SS = 69 − 8·(21/8)²
    models, _ = hand_zoo()
    config = models["lr"].astype(str) + models["batch_size"]
    assert seed_share(models["gap_loss"].to_numpy(), config.to_numpy()) == pytest.approx(1.5 / (69 - 21 ** 2 / 8))
    # configurations with one model do not enter; with none left the share is NaN
    assert np.isnan(seed_share(np.array([1.0, 2.0]), np.array([0, 1])))


def test_reliability_row_by_hand():
    table = reliability_table(analysis_input(*hand_zoo()))
    assert list(table.columns) == RELIABILITY_COLUMNS + ["ranking_tau_psi_batch_size", "ranking_tau_psi_lr"]
    assert len(table) == 1
    row = table.iloc[0]
    assert (row["width"], row["n_models"], row["n_configurations"], row["n_seeds"], row["n_measures"]) == \
        (8, 8, 4, 2, 3)
    assert row["seed_share"] == pytest.approx(1.5 / 13.875)
    # seed 0 (1, 2, 3, 4) vs seed 1 (2, 1, 3, 5): of 6 pairs only the first two configurations swap: 4/6
    assert row["gap_tau"] == pytest.approx(2 / 3)
    # per seed, τ and Ψ of (same, against, flip) are (1, −1, 1) and (1, −1, −1): n_c − n_d = 1, one pair tied on
    # each side, so τ-b = 1 / sqrt(2 · 2)
    assert row["ranking_tau_tau"] == pytest.approx(0.5)
    assert row["ranking_tau_Psi"] == pytest.approx(0.5)
    # each axis alone: ψ_lr and ψ_batch_size are ±1 per measure exactly like Ψ, so the same 0.5
    assert row["ranking_tau_psi_lr"] == pytest.approx(0.5) and row["ranking_tau_psi_batch_size"] == pytest.approx(0.5)


def test_one_seed_gives_no_rows():
    assert reliability_table(analysis_input(*hand_zoo(seeds=(0,)))).empty
    models, measures = hand_zoo()
    assert reliability_table(analysis_input(models.drop(columns="seed"), measures)).empty
