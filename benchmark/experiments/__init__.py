"""The paper's experiments (Hu, Zou & Xu 2024), each one function with the same signature:

    run(out: Path, *, zoo: Path | None = None, quick: bool = False, workers: int = 1,
        data_dir: str | None = None, log=print) -> dict

It writes a CSV of its numbers and a labelled plot (PNG + PDF) into ``out``, logs its headline in one or two
lines and returns the headline numbers. ``quick=True`` is the tests' size (seconds). ``srrbench experiment NAME``
dispatches through ``EXPERIMENTS``.

- ``ascent``       attention-only MSSA stacks: R^c per layer for crate-c / -n / -t / crate, plus the Taylor plot
- ``layerwise``    layer-wise SRR per variant across saved epochs of a built zoo
- ``regularize``   CE vs CE + beta * SRR (all layers, one fixed layer, a random layer), beta chosen on validation
- ``variants``     accuracy and parameter count of the six variants; paper-scale parameter counts
- ``sensitivity``  SRR's tau and Psi under every open choice (eps^2, l0, aggregation, normalisation, split)
"""
from __future__ import annotations

from typing import Callable

from . import ascent, layerwise, regularize, sensitivity, variants

EXPERIMENTS: dict[str, Callable[..., dict]] = {
    "ascent": ascent.run,
    "layerwise": layerwise.run,
    "regularize": regularize.run,
    "variants": variants.run,
    "sensitivity": sensitivity.run,
}

# the experiments that read a built zoo (--zoo, or the smoke zoo built into OUT/zoo with --quick)
NEEDS_ZOO = ("layerwise", "sensitivity")

__all__ = ["EXPERIMENTS", "NEEDS_ZOO"]
