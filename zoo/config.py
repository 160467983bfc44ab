"""A run's configuration (data, model, training), its id, and reading a config section from plain values.

The zoo takes a list of ``RunConfig``; which runs to train is the benchmark's business (``benchmark.profiles``).
A run's id is a short hash of its canonical config (plus a schema version); runtime settings such as paths,
workers or device never enter it. ``config_from_dict`` is the one mechanism that turns a table of plain values
(a TOML section, a JSON file) into one of the frozen config dataclasses: it takes the allowed keys and their
types from the dataclass fields, so a new field is one edit to its dataclass.
"""
from __future__ import annotations

import functools
import hashlib
import json
import types
import typing
from dataclasses import asdict, dataclass, fields

from .models import ModelConfig
from .train import TrainConfig

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "digits"
    n_train: int | None = None      # stratified subset of the training split (None: all)
    n_test: int | None = None
    num_classes: int | None = None  # keep the first k classes (None: all)
    split_seed: int = 0             # digits has no official split: this seed fixes it

    def validate(self) -> "DataConfig":
        for name in ("n_train", "n_test", "num_classes"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"data.{name} must be a positive integer, got {value!r}")
        return self


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig
    model: ModelConfig
    train: TrainConfig

    def canonical(self) -> dict:
        d = {"schema": SCHEMA_VERSION, "data": _as_dict(self.data), "model": _as_dict(self.model),
             "train": _as_dict(self.train)}
        d["train"]["checkpoint_epochs"] = list(self.train.checkpoint_epochs)
        return d

    @property
    def run_id(self) -> str:
        return config_hash(self.canonical())

    @property
    def group_id(self) -> str:
        """Same hash with the seed left out: the runs of one configuration over seeds share it."""
        d = self.canonical()
        d["train"]["seed"] = None
        return config_hash(d)

    @property
    def axes(self) -> dict:
        """The hyperparameters a zoo varies, as the columns of models.csv."""
        return {"variant": self.model.variant, "lr": self.train.lr, "batch_size": self.train.batch_size,
                "dropout": self.model.dropout, "width": self.model.dim, "depth": self.model.depth,
                "n_train": self.data.n_train, "weight_decay": self.train.weight_decay,
                "seed": self.train.seed, "dataset": self.data.dataset}

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        if d.get("schema") != SCHEMA_VERSION:
            raise ValueError(f"run config schema {d.get('schema')!r} is not {SCHEMA_VERSION}")
        return cls(data=config_from_dict(DataConfig, d["data"], "data"),
                   model=config_from_dict(ModelConfig, d["model"], "model"),
                   train=config_from_dict(TrainConfig, d["train"], "train"))


def _as_dict(cfg) -> dict:
    """asdict with ints in float fields written as floats: TOML's `dropout = [0]` is the run of 0.0, same id."""
    d = asdict(cfg)
    hints = _field_types(type(cfg))
    for f in fields(cfg):
        if float in _alternatives(hints[f.name]) and isinstance(d[f.name], int) and not isinstance(d[f.name], bool):
            d[f.name] = float(d[f.name])
    return d


def config_hash(d: dict) -> str:
    text = json.dumps(d, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


# ---------------------------------------------------------------------------------------------------------
# Plain values -> config dataclass, checked against the field types

@functools.lru_cache(maxsize=None)
def _field_types(cls) -> dict:
    return typing.get_type_hints(cls)


def _alternatives(hint) -> tuple:
    """The types a hint allows: ``int | None`` -> (int, NoneType); a plain type -> (type,)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


def _type_name(hint) -> str:
    names = []
    for alt in _alternatives(hint):
        if alt is type(None):
            names.append("none")
        elif typing.get_origin(alt) is tuple:
            names.append(f"a list of {typing.get_args(alt)[0].__name__}")
        else:
            names.append("a number" if alt is float else alt.__name__)
    return " or ".join(names)


def _coerce(value, hint):
    """``value`` as the hint's type (a list for a tuple field, an int for a float field), or raise TypeError."""
    for alt in _alternatives(hint):
        if alt is type(None) and value is None:
            return None
        if typing.get_origin(alt) is tuple and isinstance(value, (list, tuple)):
            item = typing.get_args(alt)[0]
            if all(isinstance(v, item) and not isinstance(v, bool) for v in value):
                return tuple(value)
        if alt is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
        if alt in (int, str) and isinstance(value, alt) and not isinstance(value, bool):
            return value
        if alt is bool and isinstance(value, bool):
            return value
    raise TypeError(_type_name(hint))


def checked_fields(cls, values: dict, section: str, exclude: tuple[str, ...] = ()) -> dict:
    """``values`` with every key a field of ``cls`` (less ``exclude``) and every value of its field's type (lists
    become tuples). Errors are ``ValueError`` naming ``section.key`` and what is allowed."""
    if not isinstance(values, dict):
        raise ValueError(f"[{section}] must be a table of keys and values, got {values!r}")
    hints = _field_types(cls)
    allowed = [f.name for f in fields(cls) if f.name not in exclude]
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(f'{section}.{k}' for k in unknown)}; "
                         f"allowed in [{section}]: {', '.join(allowed)}")
    checked = {}
    for key, value in values.items():
        try:
            checked[key] = _coerce(value, hints[key])
        except TypeError as err:
            raise ValueError(f"{section}.{key} must be {err}, got {value!r}") from None
    return checked


def config_from_dict(cls, values: dict, section: str):
    """``cls(**values)`` after ``checked_fields``, then its ``validate()`` if it has one.

    >>> config_from_dict(DataConfig, {"dataset": "digits", "n_train": 300}, "data").n_train
    300
    """
    cfg = cls(**checked_fields(cls, values, section))
    if hasattr(cfg, "validate"):
        cfg.validate()
    return cfg


def ensemble_key(cfg: RunConfig) -> str:
    """Runs with equal keys can train as one ensemble: their configs differ only in lr, dropout and seed."""
    d = cfg.canonical()
    d["train"]["lr"] = d["train"]["seed"] = d["model"]["dropout"] = None
    return config_hash(d)
