"""Errors shared across the package (no imports here, so any module may raise them without an import cycle)."""


class ConfigError(ValueError):
    """A parameter file, flag or config value that does not fit the configuration."""
