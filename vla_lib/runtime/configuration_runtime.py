"""What the runtime lets a command do, and what it does when something goes wrong: one dataclass each, held by the
config (`runtime.limits`, `runtime.faults`) and used by the executor and the sensor guard as they are.

It imports no config (the config imports it); `runtime.execution` is checked against `runtime/execution.py`'s modes."""
from __future__ import annotations

from dataclasses import dataclass, field, fields

from vla_lib.errors import ConfigError, refuse_nonfinite
from vla_lib.runtime.execution import EXECUTION_MODES

RESPONSES = ("hold", "stop", "continue")


@dataclass
class Limits:
    """Per-step limits (applied by `runtime.executor.ChunkExecutor` on every tick) and the sensor-rate stop
    (`runtime.guard.SensorGuard`, on every sensor batch as it arrives). Lengths in mm, angles in degrees, forces
    in N, times in s. Speeds are per second of the control period (data.action_dt_s), the only period there is."""

    max_step_mm: float = 2.0  # translation per step (scaled down, direction kept)
    max_step_deg: float = 2.0  # each angle per step (clipped)
    max_speed_mm_s: float = 20.0  # step limit = min(max_step_mm, max_speed_mm_s x period)
    max_speed_deg_s: float = 20.0
    workspace_min: list[float] = field(default_factory=lambda: [150.0, -150.0, 80.0])  # commanded target, clipped
    workspace_max: list[float] = field(default_factory=lambda: [350.0, 150.0, 250.0])
    force_limit_n: float = 5.0  # |force - baseline| above this, in any sensor sample, latches a stop
    force_baseline_n: float | None = None  # None: tare = median of the first `tare_s` of sensor samples
    tare_s: float = 0.1
    # The sensor's reading in free air (the recorder's OCT/force probe reads about -3 N) and how far a tare may lie from
    # it: a tare further off is contact, not the sensor's bias, and is refused (the stop latched) instead of becoming
    # the baseline, so a restart with the needle already in tissue cannot zero the contact force. None: no bound
    free_air_force_n: float = -3.0
    max_tare_offset_n: float | None = 1.0
    # OCT: a tip-to-surface distance below this (mm; negative = below the surface) latches a stop, where the sensor
    # model gives a distance (the simulated sensor task does; a rig needs its own A-line decoder). None = off.
    min_oct_distance_mm: float | None = None
    max_robot_age_s: float = 0.25  # stream older than this at a tick: the `robot_stale` fault
    max_sensor_age_s: float = 0.25  # ... `sensor_stale`
    # The sensor-rate watchdog (runtime.guard): no sensor sample for longer than this latches the stop (`sensor_gap`),
    # without waiting for an action tick. Above the simulated sensor's nominal loss (bursts of 10-25 ms, two of them
    # back to back ~51 ms; longest in 600 episodes 33 ms), so nominal recordings never trip it. Not
    # data.sensor_max_gap_s, the gap that makes a point of the policy's sensor window invalid.
    max_sensor_gap_s: float = 0.06
    max_camera_age_s: float = 2.0  # newest frame of any view older than this: `camera_stale` (cameras run at ~2 Hz)
    max_feature_age_s: float = 3.0  # VL features older than this (the VL thread stalled): `vl_stall`
    overrun_factor: float = 1.0  # a tick that takes longer than this x the period: `tick_overrun`
    # a policy step more than this x the step limit is not clamped but a `policy_out_of_limits` fault
    out_of_limits_factor: float = 5.0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        refuse_nonfinite(self, "runtime.limits")
        if len(self.workspace_min) != 3 or len(self.workspace_max) != 3:
            raise ConfigError("runtime.limits.workspace_min / workspace_max must be [x, y, z] in mm")
        if any(lo >= hi for lo, hi in zip(self.workspace_min, self.workspace_max)):
            raise ConfigError(f"runtime.limits: workspace_min {self.workspace_min} must be below workspace_max "
                              f"{self.workspace_max} on every axis")
        positive = ("max_step_mm", "max_step_deg", "max_speed_mm_s", "max_speed_deg_s", "force_limit_n", "tare_s",
                    "max_robot_age_s", "max_sensor_age_s", "max_sensor_gap_s", "max_camera_age_s", "max_feature_age_s",
                    "overrun_factor", "out_of_limits_factor")
        bad = [f"{k} ({getattr(self, k)!r})" for k in positive if not getattr(self, k) > 0]
        if bad:  # (NaN and inf were refused above: they would switch a protection off while it reads as on)
            raise ConfigError(f"runtime.limits: must be > 0: {', '.join(bad)}")
        if not self.max_sensor_gap_s < self.max_sensor_age_s:  # the watchdog acts first; the tick's hold backs it up
            raise ConfigError(f"runtime.limits.max_sensor_gap_s ({self.max_sensor_gap_s:g} s) must be below "
                              f"max_sensor_age_s ({self.max_sensor_age_s:g} s)")
        if self.max_tare_offset_n is not None and not self.max_tare_offset_n > 0:
            raise ConfigError(f"runtime.limits.max_tare_offset_n must be > 0 (or null), got {self.max_tare_offset_n}")
        base, bound = self.force_baseline_n, self.max_tare_offset_n
        if base is not None and bound is not None and abs(base - self.free_air_force_n) > bound:
            raise ConfigError(f"runtime.limits.force_baseline_n {base:g} N lies more than max_tare_offset_n {bound:g} N "
                              f"from free_air_force_n {self.free_air_force_n:g} N: a baseline taken in contact would "
                              "hide the contact force (set free_air_force_n to the probe's reading in free air)")


@dataclass
class FaultResponses:
    """What the runtime does on each fault: `hold` (zero step this tick, moves again when it clears), `stop`
    (latched: zero steps until an operator releases it, `Runtime.release`), `continue` (counted and logged only).
    Every fault is counted per kind in the run's report, whatever the response."""

    sensor_stale: str = "hold"  # no sensor sample for limits.max_sensor_age_s (the stream stopped)
    robot_stale: str = "stop"  # no robot pose for limits.max_robot_age_s: nothing to limit a step against
    camera_stale: str = "hold"  # no new frame for limits.max_camera_age_s
    vl_error: str = "stop"  # the VL encoder raised
    vl_stall: str = "hold"  # the features are older than limits.max_feature_age_s
    tick_overrun: str = "continue"  # an action tick took longer than limits.overrun_factor x the period
    sensor_invalid: str = "hold"  # every point of the sensor window is invalid (no sample within max gap)
    policy_nonfinite: str = "stop"  # NaN or inf in the chunk
    policy_out_of_limits: str = "stop"  # a step beyond limits.out_of_limits_factor x the step limit

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value not in RESPONSES:
                raise ConfigError(f"runtime.faults.{f.name} must be one of {list(RESPONSES)}, got {value!r}")
        if self.policy_nonfinite == "continue":
            raise ConfigError("runtime.faults.policy_nonfinite cannot be 'continue': a NaN step is never executed "
                              "(hold or stop)")


@dataclass
class RuntimeConfig:
    """The runtime every loop runs (closed-loop simulation, replay, `--mode live`): one control period, the
    chunk execution mode, the limits and the fault responses. The loop ticks once per `data.action_dt_s` (the
    duration of one predicted step: ticking at any other rate would scale every speed), so there is no rate here."""

    # one of runtime/execution.py's EXECUTION_MODES; rtc equals first while the inference delay is under a step,
    # and only rtc executes the step meant for now once it is not
    execution: str = "rtc"
    blend_decay: float = 0.5  # blend: weight exp(-decay x k) of a chunk's step k
    execution_latency_s: float = 0.03  # a step sent at t executes at t + this (the arm's latency): blend / rtc
    guard: bool = True  # the sensor-rate guard (force, OCT distance) trips the latched stop; off only to measure it
    # closed loop: extra inference delay injected between a chunk's observations and its use (the delay sweep);
    # it must leave a step of the chunk to execute: < (data.horizon - 1) x data.action_dt_s
    inject_delay_s: float = 0.0
    limits: Limits = field(default_factory=Limits)
    faults: FaultResponses = field(default_factory=FaultResponses)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.execution not in EXECUTION_MODES:
            raise ConfigError(f"runtime.execution must be one of {list(EXECUTION_MODES)}, got {self.execution!r}")
        refuse_nonfinite(self, "runtime")
        if self.blend_decay < 0 or self.execution_latency_s < 0 or self.inject_delay_s < 0:
            raise ConfigError("runtime: blend_decay, execution_latency_s and inject_delay_s must be >= 0")
        self.limits.validate()
        self.faults.validate()
