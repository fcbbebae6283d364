"""The sensor task's section (`synthetic.task`): the scenario's geometry, the demonstrator's controller, the simulated
arm and sensor stream, and the tissue and sensor model (`sensor_model`, configuration_tissue.py).

Nothing here imports the rest of the package (the config imports it)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from vla_lib.data.configuration_tissue import SensorModelConfig
from vla_lib.errors import ConfigError, refuse_nonfinite

# what must be > 0 (a zero lag divides by zero in the arm's model, a zero speed never reaches the tissue) and >= 0
_POSITIVE = ("start_height_mm", "target_depth_mm", "tolerance_mm", "force_limit_n", "oct_range_mm", "v_fast", "v_slow",
             "v_insert", "insert_gain", "episode_s", "tracking_tau_s")
_NON_NEGATIVE = ("surface_range_mm", "oct_standoff_mm", "slow_zone_mm", "v_retract", "demo_noise_mm_s",
                 "action_latency_s", "vl_latency_s", "sensor_bursts_per_10s")


@dataclass
class SensorTaskConfig:
    """The sensor-dependent insertion scenario (`synthetic.scenario: sensor_task`, vla_lib/data/scenarios.py).

    Per episode the tissue surface height and stiffness are drawn; a reactive demonstrator descends until the OCT shows
    the surface, slows down, inserts to `target_depth_mm` below the surface measured from the sensor, and holds.
    Lengths in mm, speeds in mm/s, forces in N (contact force = force above its free-air baseline)."""

    surface_z_nominal: float = 100.0
    surface_range_mm: float = 4.0  # surface height = nominal + U(-range, +range)
    stiffness_range: list[float] = field(default_factory=lambda: [0.3, 0.7])  # N/mm, U(lo, hi) per episode
    start_height_mm: float = 8.0  # tip start above the *nominal* surface (so 4-12 mm above the real one)
    target_depth_mm: float = 1.5  # insertion depth below the surface
    tolerance_mm: float = 0.5  # success: |final depth - target| <= tolerance ...
    force_limit_n: float = 1.5  # ... and the contact force never above this
    oct_standoff_mm: float = 2.5  # the OCT fibre face sits this far behind the tip: it sees the surface from
    oct_range_mm: float = 6.0  # tip-to-surface distances in (-standoff, range - standoff)
    v_fast: float = 5.0  # descent speed while the OCT shows nothing
    v_slow: float = 1.0  # speed at contact
    v_insert: float = 0.8  # top speed inside the tissue
    slow_zone_mm: float = 3.0  # start slowing down this far above the surface
    insert_gain: float = 3.0  # 1/s: inside, speed = clip(gain x remaining depth, -v_retract, v_insert)
    v_retract: float = 0.5  # past the target depth the demonstrator backs off to it
    # the recorded demonstrations vary (DART-style), so that the data holds states off the nominal path and the way
    # back: per episode an insertion gain drawn from this range (high gains overshoot, then back off) ...
    demo_gain_range: list[float] = field(default_factory=lambda: [3.0, 15.0])
    demo_noise_mm_s: float = 0.5  # ... and per-tick command noise (std, mm/s)
    episode_s: float = 6.0  # controller time per episode (after a 0.2 s pre-roll at rest)
    # the simulated robot (also used to record the demonstrations)
    tracking_tau_s: float = 0.05  # first-order lag of the arm behind its set point
    action_latency_s: float = 0.03  # from send_action to the arm starting to move
    vl_latency_s: float = 0.15  # closed loop: a camera frame's features are usable this long after capture is read
    sensor_drop_fraction: float = 0.02  # sensor packets lost at random, and bursts of 10-25 ms lost per 10 s
    sensor_bursts_per_10s: float = 3.0
    surface_offset_mm: list[float] | None = None  # [lo, hi]: the offset drawn from it, not +-surface_range_mm
    sensor_model: SensorModelConfig = field(default_factory=SensorModelConfig)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        where = "synthetic.task"
        refuse_nonfinite(self, where)
        bad = [f"{k} ({getattr(self, k)!r}) must be > 0" for k in _POSITIVE if not getattr(self, k) > 0]
        bad += [f"{k} ({getattr(self, k)!r}) must be >= 0" for k in _NON_NEGATIVE if not getattr(self, k) >= 0]
        if bad:
            raise ConfigError(f"{where}: {'; '.join(bad)}")
        if not 0 <= self.sensor_drop_fraction < 1:
            raise ConfigError(f"{where}.sensor_drop_fraction must be in [0, 1), got {self.sensor_drop_fraction!r}")
        ranges = {"stiffness_range": (self.stiffness_range, 0.0), "demo_gain_range": (self.demo_gain_range, 0.0),
                  "surface_offset_mm": (self.surface_offset_mm or [0.0, 0.0], -math.inf)}
        for key, (lo_hi, floor) in ranges.items():
            if len(lo_hi) != 2 or not floor < lo_hi[0] <= lo_hi[1]:
                raise ConfigError(f"{where}.{key} must be [lo, hi] with {'0 < ' if floor == 0 else ''}lo <= hi, "
                                  f"got {lo_hi}")
        self.sensor_model.validate()
