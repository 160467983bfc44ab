"""``srrbench measures --checkpoint FILE --model MODULE:FACTORY --data NAME``: measure a user's saved classifier.

The model comes from the user's own code (``FACTORY()`` in ``MODULE``, a dotted module name or a ``.py`` file),
its weights from a state-dict file read with ``torch.load(weights_only=True)`` (``zoo.store.load_foreign_checkpoint``:
never an arbitrary unpickling), the data from a dataset name that ``zoo.load_dataset`` knows; then
``measures.compute`` on its training split. Everything the user gives that does not fit (a module that does not
import, a factory that is not callable or returns no ``nn.Module``, a file that is not a state dict of the model's
keys and shapes, data the model rejects) is a ``UsageError`` naming it: one line and exit 2 on the command line.

Building the model is the only step tied to the source: ``model_from_factory`` for a user's module,
``official_crate`` for a CRATE checkpoint in the official layout (``--official-crate --heads K``); data and
measuring are shared.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch
from torch import nn

import measures
from measures.model_api import state_dict_mismatch
from measures.user_module import import_user_module
from zoo.data import load_dataset
from zoo.errors import BadValueError, MissingInputError
from zoo.official import load_official_checkpoint
from zoo.store import atomic_write_text, load_foreign_checkpoint


def model_from_factory(spec: str) -> nn.Module:
    """``FACTORY()`` of ``MODULE:FACTORY``, checked to be an ``nn.Module``."""
    module_name, sep, factory_name = spec.rpartition(":")
    if not sep or not module_name or not factory_name:
        raise BadValueError(f"--model must be MODULE:FACTORY (a dotted module or path/to/file.py, a colon, then a "
                            f"callable returning the nn.Module), got {spec!r}")
    module = import_user_module(module_name, "--model", file_module=f"srrbench_model_{Path(module_name).stem}")
    if not hasattr(module, factory_name):
        public = sorted(n for n in vars(module) if not n.startswith("_") and callable(getattr(module, n)))
        raise BadValueError(f"--model: {module_name} has no {factory_name!r}; its callables: {', '.join(public)}")
    factory = getattr(module, factory_name)
    if not callable(factory):
        raise BadValueError(f"--model: {module_name}:{factory_name} is not callable (it is {type(factory).__name__} "
                            f"{factory!r:.60}); FACTORY must be a function or class that returns the model")
    try:
        model = factory()
    except Exception as err:  # the user's factory failing is bad input, whatever it raises
        raise BadValueError(f"--model: {spec}() failed: {err.__class__.__name__}: {err}") from None
    if not isinstance(model, nn.Module):
        raise BadValueError(f"--model: {spec}() returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def load_state_dict(path: str | Path, model: nn.Module, flag: str) -> dict[str, torch.Tensor]:
    """The state dict in ``path`` (``torch.save(model.state_dict(), path)``), loaded safely and checked to have
    exactly ``model``'s keys and shapes; ``flag`` names the option in the errors."""
    path = Path(path).expanduser()
    try:
        state = load_foreign_checkpoint(path)
    except MissingInputError as err:
        raise MissingInputError(f"{flag}: {err}") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        odd = [str(k) for k, v in state.items() if not isinstance(v, torch.Tensor)] if isinstance(state, dict) else []
        what = f"a dict with non-tensor entries ({', '.join(odd[:5])})" if odd else f"a {type(state).__name__}"
        raise BadValueError(f"{flag}: {path} holds {what}, not a state dict of tensors; save it with "
                            f"torch.save(model.state_dict(), path)")
    problems = state_dict_mismatch(model.state_dict(), state)
    if problems:
        raise BadValueError(f"{flag}: {path} does not fit the model ({type(model).__name__}): {problems}")
    return state


def official_crate(path: str | Path, heads: int, dataset, flag: str) -> nn.Module:
    """A CRATE checkpoint in the official layout (``zoo.official``) as our ``crate``, checked against the data."""
    model = load_official_checkpoint(path, heads=heads, channels=dataset.channels)
    if model.config.image_size != dataset.image_size:
        raise BadValueError(f"{flag}: {path} is a CRATE for {model.config.image_size}x{model.config.image_size} "
                            f"images, but the data's are {dataset.image_size}x{dataset.image_size}")
    return model


def measure_checkpoint(checkpoint: str | Path, model_spec: str | None, data: str, *, data_dir: str | None = None,
                       n_train: int | None = None, official_heads: int | None = None,
                       init_checkpoint: str | Path | None = None, names=None,
                       out: str | Path | None = None) -> pd.DataFrame:
    """``measures.compute`` on the model ``model_spec`` with the weights of ``checkpoint`` (and initial weights
    of ``init_checkpoint``) on the training split of dataset ``data`` (its stratified subset of ``n_train``
    images, as a zoo profile's ``n_train`` makes it, if given); writes the row to ``out`` (CSV) if given. With
    ``official_heads`` (and no ``model_spec``) both files are CRATE checkpoints in the official layout with that
    many heads. The returned table carries ``attrs["skipped"]`` and ``attrs["errors"]`` as ``measures.compute``
    documents."""
    dataset = load_dataset(data, data_dir=data_dir, n_train=n_train)
    if official_heads is not None:
        model = official_crate(checkpoint, official_heads, dataset, "--checkpoint")
        init_state = (official_crate(init_checkpoint, official_heads, dataset, "--init-checkpoint").state_dict()
                      if init_checkpoint else None)
    else:
        model = model_from_factory(model_spec)
        model.load_state_dict(load_state_dict(checkpoint, model, "--checkpoint"))
        init_state = load_state_dict(init_checkpoint, model, "--init-checkpoint") if init_checkpoint else None
    table = measures.compute(model, dataset.x_train, dataset.y_train, init_state, names)
    if out is not None:
        atomic_write_text(Path(out), table.to_csv(index=False))
    return table
