"""The registry's cache key: a measure's code fingerprint changes when its module or a helper module it uses is
edited, and only then; measures return one float (an array is refused with its reason)."""
import importlib
import math
import sys
import textwrap

import numpy as np
import pytest
import torch

import measures
from measures.compute import evaluate_measures
from measures.context import MeasureContext
from measures.registry import code_fingerprint, module_dependencies


@pytest.fixture
def user_modules(tmp_path, monkeypatch):
    """A user's helper module and two measure modules outside the package (as with SRRBENCH_MEASURES): one uses
    the helper, the other only measures' own helpers."""
    (tmp_path / "h2_helper.py").write_text("def scale():\n    return 2.0\n")
    (tmp_path / "h2_uses_helper.py").write_text(textwrap.dedent("""
        from measures import register_measure
        from h2_helper import scale

        @register_measure("test-uses-helper", family="test")
        def uses_helper(ctx):
            return scale()
        """))
    (tmp_path / "h2_no_helper.py").write_text(textwrap.dedent("""
        from measures import register_measure
        from measures.margin import margin

        @register_measure("test-no-helper", family="test", needs_data=True)
        def no_helper(ctx):
            return margin(ctx)
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    names = ("h2_helper", "h2_uses_helper", "h2_no_helper")

    def load():
        for name in ("test-uses-helper", "test-no-helper"):
            measures.unregister_measure(name)
        for name in names:
            sys.modules.pop(name, None)
        importlib.invalidate_caches()
        for name in names:
            importlib.import_module(name)
        return {n: code_fingerprint(measures.get_measure(n)) for n in ("test-uses-helper", "test-no-helper")}
    yield tmp_path, load
    for name in ("test-uses-helper", "test-no-helper"):
        measures.unregister_measure(name)
    for name in names:
        sys.modules.pop(name, None)


def test_editing_a_helper_changes_its_dependents_fingerprints_and_nothing_else(user_modules):
    folder, load = user_modules
    before = load()
    assert load() == before                                          # the same code: the same key
    assert module_dependencies("h2_uses_helper") == ["h2_helper", "h2_uses_helper", "measures.registry",
                                                          "zoo.errors"]   # the registry raises its UnknownNameError
    assert "measures.margin" in module_dependencies("h2_no_helper")
    (folder / "h2_helper.py").write_text("def scale():\n    return 3.0  # edited\n")
    after = load()
    assert after["test-uses-helper"] != before["test-uses-helper"]
    assert after["test-no-helper"] == before["test-no-helper"]


def test_editing_a_shared_helper_of_the_package_reaches_the_measures_that_use_it():
    # margin.py is a helper of the /margin forms (spectral, path-norm), not of SRR or the plain norms
    uses_margin = {m.name for m in measures.available() if "measures.margin" in module_dependencies(m.module)}
    assert {"inverse-margin", "log-prod-of-spec-over-margin", "path-norm-over-margin"} <= uses_margin
    assert not {"srr", "l2", "ece"} & uses_margin
    assert all("measures.context" in module_dependencies(m.module, "measures.context")
               for m in measures.available())


def test_version_is_a_manual_salt_of_the_key():
    l2 = measures.get_measure("l2")
    bumped = type(l2)(**{**l2.__dict__, "version": l2.version + 1})
    assert code_fingerprint(bumped) != code_fingerprint(l2)


def test_a_measure_annotated_to_return_an_array_is_refused_at_registration():
    with pytest.raises(ValueError, match="returns one float"):
        @measures.register_measure("test-per-layer", family="test")
        def per_layer(ctx) -> np.ndarray:
            return np.zeros(3)
    assert not measures.available("test-per-layer")


def test_a_measure_returning_an_array_gets_nan_with_the_reason():
    @measures.register_measure("test-array", family="test")
    def array(ctx):
        return np.arange(3.0)
    try:
        ctx = MeasureContext(model=torch.nn.Linear(1, 1), init_state={}, x=None, y=None, n_train=None)
        out = evaluate_measures(ctx, ["test-array"])["test-array"]
    finally:
        measures.unregister_measure("test-array")
    assert math.isnan(out["value"]) and "shape (3,)" in out["error"] and "one float" in out["error"]
