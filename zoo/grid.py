"""Profiles (TOML) and the grid of runs they define.

A profile names a dataset, fixed model and training settings, and the grid: variant x lr x batch size x dropout x
width x seed. Every key is validated: unknown keys are errors that list the allowed ones.
A run's id is a short hash of its canonical config (plus a schema version); runtime settings such as paths,
workers or device never enter it.
"""
from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .models import VARIANTS, ModelConfig
from .train import TrainConfig

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

SCHEMA_VERSION = 1
GRID_AXES = ("variant", "lr", "batch_size", "dropout", "width", "seed")


class ProfileError(ValueError):
    """A profile that cannot be used; the message names the key and what is allowed."""


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "digits"
    n_train: int | None = None      # stratified subset of the training split (None: all)
    n_test: int | None = None
    num_classes: int | None = None  # keep the first k classes (None: all)
    split_seed: int = 0             # digits has no official split: this seed fixes it


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
        """The values of the grid axes for this run (the columns of models.csv)."""
        return {"variant": self.model.variant, "lr": self.train.lr, "batch_size": self.train.batch_size,
                "dropout": self.model.dropout, "width": self.model.dim, "depth": self.model.depth,
                "seed": self.train.seed, "dataset": self.data.dataset}

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        if d.get("schema") != SCHEMA_VERSION:
            raise ValueError(f"run config schema {d.get('schema')!r} is not {SCHEMA_VERSION}")
        train = dict(d["train"])
        train["checkpoint_epochs"] = tuple(train.get("checkpoint_epochs", ()))
        return cls(data=DataConfig(**d["data"]), model=ModelConfig(**d["model"]), train=TrainConfig(**train))


def _as_dict(cfg) -> dict:
    """asdict with ints in float fields written as floats: TOML's `dropout = [0]` is the run of 0.0, same id."""
    d = asdict(cfg)
    for f in fields(cfg):
        value = d[f.name]
        is_float = f.type is float or str(f.type).startswith("float")  # annotations may be strings
        if is_float and isinstance(value, int) and not isinstance(value, bool):
            d[f.name] = float(value)
    return d


def config_hash(d: dict) -> str:
    text = json.dumps(d, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    data: DataConfig
    model: dict                     # fixed ModelConfig fields (dim and dropout come from the grid)
    train: dict                     # fixed TrainConfig fields (lr, batch_size, seed come from the grid)
    grid: dict                      # axis -> tuple of values
    measures: dict = field(default_factory=dict)   # passed to the measures stage (names, options)
    analysis: dict = field(default_factory=dict)   # passed to the analysis stage
    source: str = ""                # the TOML text, stored beside the zoo
    estimate: str = ""              # expected wall time, shown by `srrbench profiles`

    def runs(self, image_size: int, channels: int, num_classes: int) -> list[RunConfig]:
        """Every run of the grid, for a dataset of the given shape, in a fixed order."""
        axes = [self.grid[a] for a in GRID_AXES]
        out = []
        for variant, lr, bs, dropout, width, seed in itertools.product(*axes):
            model = ModelConfig(variant=variant, image_size=image_size, channels=channels,
                                num_classes=num_classes, dim=width, dropout=dropout, **self.model)
            train = TrainConfig(lr=lr, batch_size=bs, seed=seed, **self.train)
            try:
                model.validate()
                train.validate()
            except ValueError as err:
                raise ProfileError(f"profile {self.name!r}: {err}") from None
            out.append(RunConfig(self.data, model, train))
        return out

    @property
    def n_runs(self) -> int:
        n = 1
        for a in GRID_AXES:
            n *= len(self.grid[a])
        return n


_SECTIONS = ("name", "description", "estimate", "data", "model", "train", "grid", "measures", "analysis")
_MODEL_KEYS = tuple(f.name for f in fields(ModelConfig) if f.name not in
                    ("variant", "image_size", "channels", "num_classes", "dim", "dropout"))
_TRAIN_KEYS = tuple(f.name for f in fields(TrainConfig) if f.name not in ("lr", "batch_size", "seed"))
_DATA_KEYS = tuple(f.name for f in fields(DataConfig))
_ANALYSIS_KEYS = ("gap", "n_boot", "seed", "include_unreached")


def load_profile(path: str | Path) -> Profile:
    """Read and validate a profile TOML file (built-in profiles are resolved by name in ``benchmark``)."""
    path = Path(path)
    if not path.is_file():
        raise ProfileError(f"profile file {path} does not exist")
    text = path.read_text()
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ProfileError(f"profile {path}: invalid TOML: {err}") from None
    return parse_profile(raw, name=path.stem, source=text)


def _check_keys(section: str, values: dict, allowed: tuple) -> None:
    if not isinstance(values, dict):
        raise ProfileError(f"profile section [{section}] must be a table, got {values!r}")
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        raise ProfileError(f"unknown key(s) {', '.join(f'{section}.{k}' for k in unknown)}; "
                           f"allowed in [{section}]: {', '.join(allowed)}")


def _check_type(where: str, value, kinds: tuple, positive: bool = False) -> None:
    if value is None:
        return
    ok = isinstance(value, kinds) and not isinstance(value, bool)
    if not ok:
        names = " or ".join(k.__name__ for k in kinds)
        raise ProfileError(f"profile key {where} must be {names}, got {value!r}")
    if positive and value <= 0:
        raise ProfileError(f"profile key {where} must be positive, got {value!r}")


def parse_profile(raw: dict, name: str = "profile", source: str = "") -> Profile:
    _check_keys("top level", raw, _SECTIONS)
    for key in ("name", "description", "estimate"):
        if key in raw and not isinstance(raw[key], str):
            raise ProfileError(f"profile key {key} must be a string, got {raw[key]!r}")
    data = raw.get("data", {})
    _check_keys("data", data, _DATA_KEYS)
    for key in ("n_train", "n_test", "num_classes"):
        _check_type(f"data.{key}", data.get(key), (int,), positive=True)
    _check_type("data.split_seed", data.get("split_seed"), (int,))
    if "dataset" in data and not isinstance(data["dataset"], str):
        raise ProfileError(f"profile key data.dataset must be a string, got {data['dataset']!r}")
    model = raw.get("model", {})
    _check_keys("model", model, _MODEL_KEYS)
    for key in ("patch_size", "depth", "heads", "dim_head"):
        _check_type(f"model.{key}", model.get(key), (int,), positive=True)
    for key in ("ista_step", "ista_lambda", "temperature"):
        _check_type(f"model.{key}", model.get(key), (int, float))
    train = dict(raw.get("train", {}))
    _check_keys("train", train, _TRAIN_KEYS)
    for key in ("max_epochs", "eval_batch_size"):
        _check_type(f"train.{key}", train.get(key), (int,), positive=True)
    _check_type("train.warmup_epochs", train.get("warmup_epochs"), (int,))
    for key in ("weight_decay", "target_ce", "label_smoothing"):
        _check_type(f"train.{key}", train.get(key), (int, float))
    if "checkpoint_epochs" in train:
        epochs = train["checkpoint_epochs"]
        if not isinstance(epochs, list):
            raise ProfileError(f"profile key train.checkpoint_epochs must be a list of epochs, got {epochs!r}")
        for e in epochs:
            _check_type("train.checkpoint_epochs", e, (int,), positive=True)
        train["checkpoint_epochs"] = tuple(epochs)
    grid = dict(raw.get("grid", {}))
    _check_keys("grid", grid, GRID_AXES)
    defaults = {"variant": ["crate"], "lr": [1e-3], "batch_size": [64], "dropout": [0.0], "width": [32],
                "seed": [0]}
    kinds = {"variant": (str,), "lr": (int, float), "batch_size": (int,), "dropout": (int, float),
             "width": (int,), "seed": (int,)}
    for axis in GRID_AXES:
        values = grid.get(axis, defaults[axis])
        if not isinstance(values, list):
            values = [values]
        if not values:
            raise ProfileError(f"profile key grid.{axis} is empty")
        for v in values:
            _check_type(f"grid.{axis}", v, kinds[axis], positive=axis in ("lr", "batch_size", "width"))
        if axis == "variant":
            bad = [v for v in values if v not in VARIANTS]
            if bad:
                raise ProfileError(f"profile key grid.variant has unknown {bad}; allowed: {', '.join(VARIANTS)}")
        if axis == "dropout" and any(not 0 <= v < 1 for v in values):
            raise ProfileError(f"profile key grid.dropout values must be in [0, 1), got {values}")
        if len(set(values)) != len(values):
            raise ProfileError(f"profile key grid.{axis} repeats a value: {values}")
        grid[axis] = tuple(values)
    if not isinstance(raw.get("measures", {}), dict):
        raise ProfileError("profile section [measures] must be a table")
    analysis = raw.get("analysis", {})
    _check_keys("analysis", analysis, _ANALYSIS_KEYS)
    if analysis.get("gap", "gap_loss") not in ("gap_loss", "gap_acc"):
        raise ProfileError(f"profile key analysis.gap must be gap_loss or gap_acc, got {analysis['gap']!r}")
    _check_type("analysis.n_boot", analysis.get("n_boot"), (int,), positive=True)
    _check_type("analysis.seed", analysis.get("seed"), (int,))
    if not isinstance(analysis.get("include_unreached", False), bool):
        raise ProfileError("profile key analysis.include_unreached must be true or false")
    try:
        data_cfg = DataConfig(**data)
        # probe the fixed settings once so a bad value is reported before any training
        # (image_size = patch_size: whether the patches tile the images depends on the dataset, see runs())
        patch = model.get("patch_size", 2)
        ModelConfig(image_size=patch, patch_size=patch, dim=grid["width"][0],
                    **{k: v for k, v in model.items() if k != "patch_size"}).validate()
        TrainConfig(**train).validate()
    except (TypeError, ValueError) as err:
        raise ProfileError(f"profile {name!r}: {err}") from None
    return Profile(name=raw.get("name", name), description=raw.get("description", ""), data=data_cfg,
                   model=model, train=train, grid=grid, measures=dict(raw.get("measures", {})),
                   analysis=dict(raw.get("analysis", {})), source=source,
                   estimate=str(raw.get("estimate", "")))
