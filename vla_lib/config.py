"""One configuration system for the CLI, the notebooks and papermill.

A run is described by `RunConfig`, a tree of dataclasses. A YAML parameter file has one mapping per section
(`synthetic:`, `data:`, `backbone:`, `cache:`, `model:`, `train:`, `eval:`, `runtime:`, `live:`, `closed_loop:`,
`sweep:`, `lora:`, `augment:`) plus a few top-level keys (and `extends: other.yaml`, see `load_params`); papermill's
`-f params/x.yaml` injects the same sections as notebook variables, and `RunConfig.from_dict` turns them back into
dataclasses. CLI flags (including those of the commands in docs/training.md) are dotted overrides applied on top
(see `cli.py`).
Unknown keys are errors naming the section's known keys, never silently ignored. Every section validates itself
when it is built, and `RunConfig.validate` runs them all again at the start of every mode.
The sections' dataclasses live in `config_sections.py` (`augment:` in `data/configuration_augment.py`) and are
re-exported here: import them from this module. Which settings a resumed run may change is `config_compat.py`'s.
"""
from __future__ import annotations

import types
import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from vla_lib.config_compat import changed_settings
from vla_lib.config_sections import (  # noqa: F401  (re-exported: `from vla_lib.config import DataConfig` etc.)
    PREDICTORS, WEIGHTLESS, BackboneConfig, CacheConfig, ClosedLoopConfig, DataConfig, EvalConfig, GroupConfig,
    LiveConfig, LoraConfig, SensorTaskConfig, SweepConfig, SyntheticConfig, TrainConfig, _choice, _default_groups)
from vla_lib.data.configuration_augment import AugmentConfig
from vla_lib.dotted import get_dotted, set_dotted
from vla_lib.errors import ConfigError
from vla_lib.models.configuration_policy import PolicyConfig
from vla_lib.runtime.configuration_runtime import RuntimeConfig

__all__ = ["ConfigError", "RunConfig"]


@dataclass
class RunConfig:
    run_name: str = "demo"
    output_root: str = "outputs"
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    data: DataConfig = field(default_factory=DataConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    model: PolicyConfig = field(default_factory=PolicyConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    live: LiveConfig = field(default_factory=LiveConfig)
    closed_loop: ClosedLoopConfig = field(default_factory=ClosedLoopConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)  # Stage 2 only
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # training samples' sensor windows

    def __post_init__(self) -> None:
        self.derive()

    # One source for each value: these fields mirror another one. Left unset they take its value; given and
    # different, they are an error (a value in two places that disagree is a bug waiting to happen).
    DERIVED = {"model.horizon": "data.horizon", "model.sensor_enabled": "data.sensor_enabled",
               "data.history_steps": "model.history_steps"}

    def defaults(self) -> dict[str, Any]:
        """Fields that, left unset (None or ""), follow another value but may also be set on their own."""
        return {"model.sensor_length": self.data.sensor_window_size,  # may differ: the encoder resamples the window
                "train.output_dir": str(self.run_dir / "train"), "cache.dir": str(Path(self.output_root) / "vl_cache")}

    def derive(self) -> None:
        self._check_across()
        for target, source in self.DERIVED.items():
            value = self._get(source)
            if self._get(target) is None:
                self._set(target, value)
            elif self._get(target) != value:
                raise ConfigError(f"{target} ({self._get(target)!r}) must equal {source} ({value!r}): it is derived "
                                  f"from it; set {source} only")
        for target, value in self.defaults().items():
            if self._get(target) in (None, ""):
                self._set(target, value)

    def _get(self, dotted: str):
        return get_dotted(self, dotted)

    def _set(self, dotted: str, value) -> None:
        set_dotted(self, dotted, value)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_root) / self.run_name

    # -- construction ---------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "RunConfig":
        return _build(cls, values or {}, "")

    @classmethod
    def from_yaml(cls, path: str | Path) -> "RunConfig":
        path = Path(path)
        values = load_params(path)
        try:
            return cls.from_dict(values)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None

    def validate(self) -> None:
        """Every section's checks and the derived values, again (a config may have been changed after it was built):
        run at the start of every mode."""
        for f in fields(self):
            section = getattr(self, f.name)
            if hasattr(section, "validate"):
                section.validate()
        for target, source in self.DERIVED.items():
            if self._get(target) != self._get(source):
                raise ConfigError(f"{target} ({self._get(target)!r}) differs from {source} ({self._get(source)!r}) "
                                  f"after the config was built: set {source} only")
        self._check_across()

    def _check_across(self) -> None:
        """Checks that need two sections."""
        self.augment.check_window(self.data.sensor_window_size)
        room = (self.data.horizon - 1) * self.data.action_dt_s
        if self.runtime.inject_delay_s >= room - 1e-9:
            raise ConfigError(f"runtime.inject_delay_s ({self.runtime.inject_delay_s:g} s) must leave a step of the "
                              f"chunk to execute: < (data.horizon - 1) x data.action_dt_s = {room:g} s")
        if self.model.contact_memory and not self.data.sensor_enabled:
            raise ConfigError("model.contact_memory needs data.sensor_enabled: the memory comes from the sensor's force")
        if self.model.contact_memory and abs(self.data.anchor_stride_s - self.data.action_dt_s) > 1e-9:
            raise ConfigError("model.contact_memory needs data.anchor_stride_s = data.action_dt_s: the samples' memory "
                              "is run over the anchors as the loop runs it over its ticks, one per action_dt_s")
        if self.live.send_actions:  # the arm moves: nothing that protects it may be off
            protections = {"runtime.guard": self.runtime.guard, "live.require_sensor": self.live.require_sensor,
                           "runtime.limits.max_tare_offset_n": self.runtime.limits.max_tare_offset_n is not None}
            off = [k for k, on in protections.items() if not on]
            if off:
                raise ConfigError(f"live.send_actions moves the robot: {', '.join(off)} must be on (they are off "
                                  "only to measure the loop, in a dry run)")
            # a stream that stopped answered with `continue` lets the arm move with nothing watching the force
            blind = [f"runtime.faults.{k}" for k in ("sensor_stale", "sensor_invalid", "robot_stale")
                     if getattr(self.runtime.faults, k) == "continue"]
            if blind:
                raise ConfigError(f"live.send_actions moves the robot: {', '.join(blind)} must be hold or stop, not "
                                  "continue (a stopped stream would leave the arm moving unsupervised)")

    def to_dict(self) -> dict[str, Any]:
        """Plain values; derived fields are written as null (so an override of their source carries over)."""
        values = asdict(self)
        unset = {**{t: (self._get(s), None) for t, s in self.DERIVED.items()},
                 **{t: (v, "" if isinstance(v, str) else None) for t, v in self.defaults().items()}}
        for target, (default, blank) in unset.items():
            if self._get(target) == default:
                set_dotted(values, target, blank)
        return values

    def to_yaml(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    def with_overrides(self, overrides: dict[str, Any]) -> "RunConfig":
        """Apply dotted overrides ({"train.lr": 1e-3}); values are type-checked like YAML values."""
        values = self.to_dict()
        for dotted, value in overrides.items():
            try:
                get_dotted(values, dotted)
            except (KeyError, TypeError, AttributeError):
                raise ConfigError(f"unknown parameter '{dotted}'") from None
            set_dotted(values, dotted, value)
        return RunConfig.from_dict(values)


# ---------------------------------------------------------------------------------------------------------------
# Typed construction from plain dicts (YAML, papermill, JSON in checkpoints)
# ---------------------------------------------------------------------------------------------------------------
def _build(cls: type, values: dict[str, Any], where: str):
    if not isinstance(values, dict):
        raise ConfigError(f"'{where or cls.__name__}' must be a mapping, got {type(values).__name__}")
    if hasattr(cls, "expand_preset"):
        values = cls.expand_preset(values)
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown parameter(s) {', '.join(where + k for k in unknown)}; known: {sorted(known)}")
    kwargs = {k: _coerce(hints[k], v, f"{where}{k}") for k, v in values.items()}
    try:
        return cls(**kwargs)  # each section validates itself in __post_init__
    except TypeError as e:
        raise ConfigError(f"{where or cls.__name__}: {e}") from None


def _coerce(tp: Any, value: Any, where: str):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(args[0], value, where)
    if is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return _build(tp, value, where + ".")
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"'{where}' must be a list, got {value!r}")
        return [_coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"'{where}' must be true or false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"'{where}' must be a number, got {value!r}")
        try:
            number = float(value) if tp is float else int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"'{where}' must be {'a number' if tp is float else 'an integer'}, got {value!r}") from None
        if tp is int and isinstance(value, float) and value != int(value):
            raise ConfigError(f"'{where}' must be an integer, got {value!r}")
        return number
    if tp is str:
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"'{where}' must be a string, got {value!r}")
        return str(value)
    if tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"'{where}' must be a mapping, got {value!r}")
        return dict(value)
    return value


def deep_merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for k, v in override.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_params(path: str | Path) -> dict:
    """A parameter file's values, its `extends:` resolved (see `resolve_extends`)."""
    path = Path(path)
    return resolve_extends(_read_params(path), path.parent, (path.resolve(),))


def resolve_extends(values: dict, base_dir: str | Path, _seen: tuple = ()) -> dict:
    """`extends: other.yaml` (relative to `base_dir`, the file's folder) takes that file's values first and these on
    top, section by section: a variant run (Stage 2, a sweep member) names only what differs, so each value has one
    source."""
    values = dict(values)
    base = values.pop("extends", None)
    if base is None:
        return values
    base_path = (Path(base_dir) / base).resolve()
    if base_path in _seen:
        raise ConfigError(f"extends {base}: the files extend each other in a circle ({' -> '.join(map(str, _seen))})")
    return deep_merge(resolve_extends(_read_params(base_path), base_path.parent, (*_seen, base_path)), values)


def _read_params(path: Path) -> dict:
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError as e:
        raise ConfigError(f"parameter file not found: {path}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return values


def settings_changed(stored: dict, current: dict, free_only: bool = False) -> list[str]:
    """The settings that differ between a stored run config and the current one: those a resume cannot honour, or
    (`free_only`) the RESUME_FREE ones it can."""
    return changed_settings(stored, current, RunConfig().to_dict(), free_only)
