"""Profiles: TOML files that define a benchmark (dataset, fixed settings, the grid of runs, measure and analysis
options), and the built-in ones beside this module, resolved by name.

A profile's ``[data]``, ``[model]`` and ``[train]`` tables hold fixed fields of ``zoo.DataConfig``,
``zoo.ModelConfig`` and ``zoo.TrainConfig``; ``[grid]`` lists the values of each varied axis (``GRID_AXES``, each
one field of one of those configs); ``[measures]`` holds ``names`` and ``measures.MeasureOptions`` fields;
``[analysis]`` holds ``AnalysisSettings`` fields. Keys and types are checked against the dataclass fields
(``zoo.config_from_dict``), so every bad key or value is reported, naming it, before anything trains. The zoo
itself only ever sees the list of run configurations (``Profile.runs``).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

from measures import MeasureOptions, resolve_names
from zoo import BadValueError, DataConfig, ModelConfig, RunConfig, TrainConfig
from zoo.config import checked_fields, config_from_dict
from zoo.runner import GAPS

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

PROFILE_DIR = Path(__file__).resolve().parent

# grid axis -> (section, config field); an axis left out of [grid] takes its section's (or the default) value
GRID_AXES = {"variant": ("model", "variant"), "lr": ("train", "lr"), "batch_size": ("train", "batch_size"),
             "dropout": ("model", "dropout"), "width": ("model", "dim"), "n_train": ("data", "n_train"),
             "weight_decay": ("train", "weight_decay"), "depth": ("model", "depth"), "seed": ("train", "seed")}
_CONFIGS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}
# model fields that come from the dataset, never from a profile
_FROM_DATASET = ("image_size", "channels", "num_classes")
_TOP_LEVEL = ("name", "description", "estimate", "data", "model", "train", "grid", "measures", "analysis")


class ProfileError(BadValueError):
    """A profile that cannot be used; the message names the key and what is allowed."""


@dataclass(frozen=True)
class AnalysisSettings:
    """A profile's [analysis] table: what `srrbench analyze` ranks against and how."""
    gap: str = "gap_loss"           # gap_loss (test CE - train CE, the paper's), gap_acc (train acc - test acc) or
                                    # gap_shift (shifted-test CE - train CE, zoo.shift)
    n_boot: int = 200               # bootstrap resamples of every interval
    seed: int = 0                   # seed of the bootstrap
    include_unreached: bool = False  # rank runs that stopped above the CE target too (never for real studies)

    def validate(self) -> "AnalysisSettings":
        if self.gap not in GAPS:
            raise ValueError(f"analysis.gap must be one of {', '.join(GAPS)}, got {self.gap!r}")
        if self.n_boot <= 0:
            raise ValueError(f"analysis.n_boot must be positive, got {self.n_boot!r}")
        return self


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    sections: dict                  # "data" / "model" / "train" -> fixed field values
    grid: dict                      # axis -> tuple of values, in GRID_AXES order
    measures: dict = field(default_factory=dict)   # names and MeasureOptions fields
    analysis: AnalysisSettings = AnalysisSettings()
    source: str = ""                # the TOML text, stored beside the zoo
    estimate: str = ""              # expected wall time, shown by `srrbench profiles`

    @property
    def data(self) -> DataConfig:
        """The data settings fixed for every run (a grid over n_train changes only that field)."""
        return config_from_dict(DataConfig, self.sections["data"], "data")

    @property
    def n_runs(self) -> int:
        n = 1
        for values in self.grid.values():
            n *= len(values)
        return n

    def runs(self, image_size: int, channels: int, num_classes: int) -> list[RunConfig]:
        """Every run of the grid, for a dataset of the given shape, in a fixed order (the last axis fastest)."""
        shape = {"image_size": image_size, "channels": channels, "num_classes": num_classes}
        out = []
        for values in itertools.product(*self.grid.values()):
            sections = {s: dict(v) for s, v in self.sections.items()}
            sections["model"].update(shape)
            for axis, value in zip(self.grid, values):
                section, name = GRID_AXES[axis]
                sections[section][name] = value
            try:
                out.append(RunConfig(**{s: config_from_dict(cls, sections[s], s) for s, cls in _CONFIGS.items()}))
            except ValueError as err:
                raise ProfileError(f"profile {self.name!r}: {err}") from None
        return out


def builtin_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))


def resolve_profile(name_or_path: str | Path) -> Profile:
    """A built-in profile by name (``smoke``, ``default``, ...) or any TOML file by path, fully validated."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        return load_profile(path)
    if str(name_or_path) in builtin_profiles():
        return load_profile(PROFILE_DIR / f"{name_or_path}.toml")
    raise ProfileError(f"unknown profile {str(name_or_path)!r}; built-in profiles: {', '.join(builtin_profiles())} "
                       f"(or give a path to a .toml file)")


def load_profile(path: str | Path) -> Profile:
    """Read and validate a profile TOML file."""
    path = Path(path)
    if not path.is_file():
        raise ProfileError(f"profile file {path} does not exist")
    text = path.read_text()
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ProfileError(f"profile {path}: invalid TOML: {err}") from None
    return parse_profile(raw, name=path.stem, source=text)


def parse_profile(raw: dict, name: str = "profile", source: str = "") -> Profile:
    """A validated Profile from the parsed TOML tables; every error names the key."""
    unknown = sorted(set(raw) - set(_TOP_LEVEL))
    if unknown:
        raise ProfileError(f"unknown key(s) {', '.join(unknown)}; allowed in [top level]: {', '.join(_TOP_LEVEL)}")
    for key in ("name", "description", "estimate"):
        if key in raw and not isinstance(raw[key], str):
            raise ProfileError(f"profile key {key} must be a string, got {raw[key]!r}")
    name = raw.get("name", name)
    try:
        sections = {s: _section(raw, s) for s in _CONFIGS}
        grid = _grid(raw, sections)
        _check_grid_values(grid, sections)
        measures = _measures(raw.get("measures", {}))
        analysis = config_from_dict(AnalysisSettings, raw.get("analysis", {}), "analysis")
    except ValueError as err:
        raise ProfileError(f"profile {name!r}: {err}") from None
    return Profile(name=name, description=raw.get("description", ""), sections=sections, grid=grid,
                   measures=measures, analysis=analysis, source=source, estimate=str(raw.get("estimate", "")))


def _section(raw: dict, section: str) -> dict:
    values = raw.get(section, {})
    checked_fields(_CONFIGS[section], values, section, exclude=_FROM_DATASET if section == "model" else ())
    return dict(values)


def _probe(section: str, values: dict) -> None:
    """Check fixed values as one config of ``section``; a bad key or value is reported before anything trains."""
    cls = _CONFIGS[section]
    checked = checked_fields(cls, values, section, exclude=_FROM_DATASET if section == "model" else ())
    if section == "model":  # whether the patches tile the images depends on the dataset: see Profile.runs
        checked["image_size"] = checked.get("patch_size", ModelConfig.patch_size)
    cls(**checked).validate()


def _grid(raw: dict, sections: dict) -> dict:
    grid = raw.get("grid", {})
    if not isinstance(grid, dict):
        raise ValueError(f"[grid] must be a table of axes, got {grid!r}")
    unknown = sorted(set(grid) - set(GRID_AXES))
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(f'grid.{k}' for k in unknown)}; "
                         f"allowed in [grid]: {', '.join(GRID_AXES)}")
    out = {}
    for axis, (section, name) in GRID_AXES.items():  # GRID_AXES order fixes the order of the runs
        if axis not in grid:
            continue
        if name in sections[section]:
            raise ValueError(f"{section}.{name} is fixed and also varied as grid.{axis}; keep one")
        values = grid[axis] if isinstance(grid[axis], list) else [grid[axis]]
        if not values:
            raise ValueError(f"grid.{axis} is empty")
        if any(values.count(v) > 1 for v in values):   # values may be unhashable (a typo such as [[0.1]])
            raise ValueError(f"grid.{axis} repeats a value: {values}")
        out[axis] = tuple(values)
    return out


def _check_grid_values(grid: dict, sections: dict) -> None:
    """Every fixed value and every grid value, each checked as a config of its section before anything trains.
    A grid value is checked with the fixed values and the first value of the axes checked before it; width comes
    first because other fields are constrained by it (heads must divide it), so an error names the axis at fault."""
    checked = {s: dict(values) for s, values in sections.items()}
    for section in sections:
        if section == "model" and "width" in grid:  # heads and dim_head are only meaningful with a width
            checked[section]["dim"] = grid["width"][0]
            where = f"[model] with grid.width = {grid['width'][0]!r}"
        else:
            where = f"[{section}]"
        try:
            _probe(section, checked[section])
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
    for axis in sorted(grid, key=lambda a: a != "width"):
        section, field_name = GRID_AXES[axis]
        for value in grid[axis]:
            try:
                _probe(section, {**checked[section], field_name: value})
            except ValueError as err:
                raise ValueError(f"grid.{axis} = {value!r}: {err}") from None
        checked[section][field_name] = grid[axis][0]


def _measures(settings) -> dict:
    """[measures] holds ``names`` (measure names or patterns) and MeasureOptions fields."""
    if not isinstance(settings, dict):
        raise ValueError("[measures] must be a table")
    settings = dict(settings)
    names = settings.pop("names", None)
    if names is not None:
        names = [names] if isinstance(names, str) else names
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"measures.names must be a list of measure names, got {names!r}")
        try:
            resolve_names(names)
        except KeyError as err:
            raise ValueError(err.args[0]) from None
    MeasureOptions.from_dict(settings)
    return dict(settings, **({"names": names} if names is not None else {}))
