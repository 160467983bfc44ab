"""analysis.selection: candidate axes and configuration codes (seed replicates)."""
import doctest

import numpy as np
import pandas as pd
import pytest

from analysis import selection
from analysis.selection import DEFAULT_AXES, configuration_codes, present_axes


def test_docstring_examples_run():
    failures, tried = doctest.testmod(selection, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert tried >= 2 and failures == 0


def test_default_axes_include_the_new_grid_axes_when_present():
    assert {"n_train", "weight_decay", "depth"} <= set(DEFAULT_AXES) and "seed" not in DEFAULT_AXES
    old = pd.DataFrame(columns=["run_id", "variant", "lr", "batch_size", "dropout", "width", "seed"])
    assert present_axes(old) == ("variant", "lr", "batch_size", "dropout")
    new = old.assign(n_train=1, weight_decay=0.0)
    assert present_axes(new) == ("variant", "lr", "batch_size", "dropout", "weight_decay", "n_train")
    with pytest.raises(KeyError, match="momentum"):
        present_axes(old, ["lr", "momentum"])


def test_configuration_ignores_seed_and_run_columns_only():
    models = pd.DataFrame({"lr": [1, 1, 1, 2], "width": [8, 8, 16, 8], "seed": [0, 1, 0, 0],
                           "gap_loss": [0.1, 0.2, 0.3, 0.4], "n_train": [np.nan, np.nan, np.nan, np.nan]})
    codes = configuration_codes(models, ["lr", "n_train"])
    assert codes[0] == codes[1] and len(set(codes)) == 3
