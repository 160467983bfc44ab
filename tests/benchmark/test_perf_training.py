"""``srrbench perf``'s ensemble-training row runs on the profile it names and agrees with the plain loop."""
from benchmark.perf import perf_ensemble_training


def test_ensemble_training_row_agrees_with_the_plain_loop():
    # digits-small keeps checkpoints at epochs 1..40: the timed work (a few epochs) must drop them, not be refused
    rows = perf_ensemble_training(quick=True)
    assert [r["task"] for r in rows] == ["ensemble training (crate d=32, batch 32, 6 runs x 1 epochs)"]
    assert rows[0]["agree"], rows[0]["detail"]
    assert rows[0]["reference_s"] > 0 and rows[0]["fast_s"] > 0
