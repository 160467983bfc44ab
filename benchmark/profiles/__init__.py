"""The built-in profiles (TOML files beside this module), resolved by name."""
from __future__ import annotations

from pathlib import Path

from zoo.grid import Profile, ProfileError, load_profile

PROFILE_DIR = Path(__file__).resolve().parent


def builtin_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))


def resolve_profile(name_or_path: str | Path) -> Profile:
    """A built-in profile by name (``smoke``, ``default``, ...) or any TOML file by path."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        return load_profile(path)
    if str(name_or_path) in builtin_profiles():
        return load_profile(PROFILE_DIR / f"{name_or_path}.toml")
    raise ProfileError(f"unknown profile {str(name_or_path)!r}; built-in profiles: {', '.join(builtin_profiles())} "
                       f"(or give a path to a .toml file)")
