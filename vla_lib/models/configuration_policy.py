"""Configuration of the Stage-1 heads (SensorEncoder + Action Expert), with named presets.

`original` is the full-size heads with their shapes pinned (SensorEncoder 47,238,656 parameters, concat expert
72,448,007, no proprioception token: tests/models checks the counts, so its checkpoints keep loading), with the two
input options that add no parameters on; `original_exact` turns them off too (no sensor positional encoding, raw
force/A-line) to compare like for like with heads trained without them. `small` is the CPU demo.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from vla_lib.dims import ACTION_DIM, SENSOR_CHANNELS
from vla_lib.errors import ConfigError
from vla_lib.models.fusion import FUSIONS


@dataclass
class PolicyConfig:
    preset: str = ""  # when set, the preset's values fill every field the YAML does not give
    action_dim: int = ACTION_DIM
    # Derived, one source each (RunConfig fills them; a different value given here is an error):
    horizon: int | None = None  # = data.horizon
    sensor_enabled: bool | None = None  # = data.sensor_enabled
    vl_dim: int = 0  # the backbone's hidden size: training takes it from the feature store (0 = not known yet)
    sensor_channels: int = SENSOR_CHANNELS  # 1 force + 1025 A-line
    # The encoder's time axis (CLI flag --sensor-temporal-length); a window of another length is resampled to it.
    sensor_length: int | None = None  # None = data.sensor_window_size
    sensor_conv_channels: list[int] = field(default_factory=lambda: [512, 1024, 1024, 1024])
    sensor_dim: int = 1024
    sensor_layers: int = 2
    sensor_heads: int = 8
    sensor_ff: int = 4096
    sensor_output_dim: int = 3072
    # Input options, on by default (docs/training.md); neither adds parameters: the `original` preset keeps its counts.
    sensor_positional_encoding: bool = True  # without it the sensor transformer has no notion of time order
    normalize_sensor_inputs: bool = True  # force (~-3) and A-line standardised with the training-split stats
    # Proprioception: the robot's last K end-effector pose deltas as one more condition token. Without it nothing
    # tells the expert how fast the arm is already moving; K = 0 (the `original` presets: their pinned shapes have
    # no such token) turns it off.
    history_steps: int = 4
    # How the chunk reads the arm's own motion (both need history_steps >= 1; both off: no residual, and the
    # history token always sees the measured deltas).
    # `residual_last_delta`: every step is the newest history delta plus a learned correction, so the step the arm
    # has already committed to (latency + lag) comes from the measurement and the heads learn only the change.
    residual_last_delta: bool = False
    # Training only: the share of samples whose proprioception token is a learned "no history" token, so the expert
    # cannot lean on the arm's own speed alone (the copycat problem) and must read the sensor too.
    history_dropout: float = 0.0
    # Proprioception in free air only: once the contact memory says the tip is in contact, the proprioception token is
    # the "no history" one (training and inference alike), so in tissue the heads act on the sensor, not on the arm's
    # speed (which they would copy past the target when the arm lags). A sample without sensor data has no contact
    # memory, so it reads its history throughout. Needs history_steps >= 1 and contact_memory; not with
    # residual_last_delta (its residual would carry the arm's speed into the tissue all the same).
    history_until_contact: bool = False
    # The contact memory (data/contact.py) as one more condition token: where the force began, so a film above the
    # target and a layer below it (the same two reflections in one window) are told apart.
    contact_memory: bool = False
    fusion: str = "concat"  # one of models/fusion.py's FUSIONS
    expert_hidden: int = 1024
    expert_layers: int = 4
    expert_heads: int = 8
    expert_ff: int = 4096
    dropout: float = 0.1

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.fusion not in FUSIONS:
            raise ConfigError(f"model.fusion must be one of {list(FUSIONS)}, got {self.fusion!r}")
        if self.preset and self.preset not in PRESETS:
            raise ConfigError(f"model.preset must be one of {sorted(PRESETS)}, got {self.preset!r}")
        if (self.residual_last_delta or self.history_dropout) and not self.history_steps:
            raise ConfigError("model.residual_last_delta and model.history_dropout need model.history_steps >= 1")
        if self.history_until_contact and not (self.history_steps and self.contact_memory):
            raise ConfigError("model.history_until_contact needs model.history_steps >= 1 and model.contact_memory")
        if self.history_until_contact and self.residual_last_delta:
            raise ConfigError("model.history_until_contact and model.residual_last_delta exclude each other: the "
                              "residual adds the arm's last delta in contact too")
        if not 0.0 <= self.history_dropout < 1.0:  # 1 would train a token that evaluation then feeds real deltas
            raise ConfigError(f"model.history_dropout must be in [0, 1), got {self.history_dropout}")
        if self.sensor_dim % self.sensor_heads or self.expert_hidden % self.expert_heads:
            raise ConfigError("model: hidden sizes must be divisible by their head counts")

    @classmethod
    def expand_preset(cls, values: dict) -> dict:
        """Called by the config loader: fields given explicitly win over the preset's."""
        name = values.get("preset") or ""
        return {**PRESETS.get(name, {}), **values}


PRESETS: dict[str, dict] = {
    "original": {"history_steps": 0},  # otherwise the dataclass defaults are its shapes
    "original_exact": {"history_steps": 0, "sensor_positional_encoding": False, "normalize_sensor_inputs": False},
    "small": {
        "sensor_conv_channels": [64, 128, 128, 128], "sensor_dim": 128, "sensor_layers": 1, "sensor_heads": 4,
        "sensor_ff": 256, "sensor_output_dim": 256, "expert_hidden": 128, "expert_layers": 2, "expert_heads": 4,
        "expert_ff": 256, "dropout": 0.0,
    },
}
