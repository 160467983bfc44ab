"""The built-in profiles (TOML files beside this module), resolved by name."""
from __future__ import annotations

from pathlib import Path

from zoo.grid import Profile, ProfileError, load_profile

PROFILE_DIR = Path(__file__).resolve().parent


def builtin_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))


def resolve_profile(name_or_path: str | Path) -> Profile:
    """A built-in profile by name (``smoke``, ``default``, ...) or any TOML file by path, fully validated
    (its [measures] table too) before anything is trained."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        return check_measures_section(load_profile(path))
    if str(name_or_path) in builtin_profiles():
        return check_measures_section(load_profile(PROFILE_DIR / f"{name_or_path}.toml"))
    raise ProfileError(f"unknown profile {str(name_or_path)!r}; built-in profiles: {', '.join(builtin_profiles())} "
                       f"(or give a path to a .toml file)")


def check_measures_section(profile: Profile) -> Profile:
    """[measures] holds ``names`` (measure names or patterns) and MeasureOptions fields; anything else is an error."""
    from measures import MeasureOptions, resolve_names
    settings = dict(profile.measures)
    names = settings.pop("names", None)
    if isinstance(names, str):
        names = [names]
    try:
        if names is not None:
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise ValueError(f"measures.names must be a list of measure names, got {names!r}")
            resolve_names(names)
        MeasureOptions.from_dict(settings)
    except (KeyError, ValueError) as err:
        message = err.args[0] if err.args else str(err)
        raise ProfileError(f"profile {profile.name!r} [measures]: {message}") from None
    return profile
