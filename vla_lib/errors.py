"""Errors shared across the package (no package imports here, so any module may raise them without an import cycle)."""
import math
from dataclasses import fields


class ConfigError(ValueError):
    """A parameter file, flag or config value that does not fit the configuration."""


def refuse_nonfinite(section, where: str) -> None:
    """A config section's floats (and lists of floats) must be finite: NaN compares false with every bound, so a
    check like `x < 0` lets it through to the arm (a NaN blend weight made NaN steps), and inf switches a limit off."""
    for f in fields(section):
        value = getattr(section, f.name)
        if any(isinstance(v, float) and not math.isfinite(v) for v in (value if isinstance(value, list) else [value])):
            raise ConfigError(f"{where}.{f.name} must be finite, got {value!r}")
