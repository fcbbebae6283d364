"""The `augment:` section: sensor-window augmentation of training samples (applied by vla_lib/data/augment.py).

Each augmentation has `<name>_p`, the chance it is applied to a window, and its size. Sizes are in the window's raw
units (A-line counts, N, grid points), before the heads standardise it. Off unless `enabled`."""
from __future__ import annotations

from dataclasses import dataclass, field

from vla_lib.errors import ConfigError


@dataclass
class AugmentConfig:
    enabled: bool = False
    gain_p: float = 0.5
    gain: float = 0.3  # A-line x exp(U(-ln(1 + gain), ln(1 + gain))): log-uniform, here x0.77 .. x1.3
    aline_offset_p: float = 0.5
    aline_offset: float = 10.0  # A-line + U(-a, a) (the synthetic background is ~40 with noise 5)
    force_offset_p: float = 0.5
    force_offset_n: float = 0.05  # force + U(-a, a) N (a tare error)
    reflection_p: float = 0.3
    reflections_max: int = 2  # 1 .. this many extra reflection peaks at random depths, the same in every row
    # each peak's height: U(lo, hi) x the window's own peak height above its median A-line value, so an added
    # reflection stays below the surface reflection the demonstrations were recorded with
    reflection_amplitude: list[float] = field(default_factory=lambda: [0.05, 0.3])
    reflection_sigma: float = 6.0  # peak width in A-line samples (the sensor model's reflection)
    speckle_p: float = 0.3
    speckle_std: float = 0.1  # A-line x max(0, 1 + std N(0, 1)), each point of each row
    drop_p: float = 0.3
    drop_fraction: float = 0.1  # each valid grid point marked invalid with this chance (0 and masked)
    burst_p: float = 0.2
    burst_max: int = 10  # a run of 1 .. this many consecutive grid points marked invalid (a burst of lost packets)
    shift_p: float = 0.3
    shift_max: int = 2  # the window rolled by up to this many grid points either way; wrapped points invalid
    # The whole sensor lost: every point invalid, i.e. a sample without sensor (the learned null embedding). A
    # single channel is never dropped: force and A-line share one validity mask, so a zeroed channel on valid points
    # would be a value (0 N, a black A-line) the heads learn as data.
    drop_sensor_p: float = 0.0

    def __post_init__(self) -> None:
        self.validate()

    def chances(self) -> dict[str, float]:
        return {k: v for k, v in vars(self).items() if k.endswith("_p")}

    def validate(self) -> None:
        bad = [f"augment.{k} ({v!r})" for k, v in self.chances().items() if not 0 <= v <= 1]
        sizes = ("gain", "aline_offset", "force_offset_n", "reflections_max", "speckle_std", "burst_max", "shift_max")
        bad += [f"augment.{k} ({getattr(self, k)!r})" for k in sizes if getattr(self, k) < 0]
        lo_hi = self.reflection_amplitude
        if len(lo_hi) != 2 or not 0 <= lo_hi[0] <= lo_hi[1]:
            bad.append(f"augment.reflection_amplitude ({lo_hi!r})")
        if not self.reflection_sigma > 0 or not 0 <= self.drop_fraction < 1:
            bad.append(f"augment.reflection_sigma ({self.reflection_sigma!r}) or drop_fraction "
                       f"({self.drop_fraction!r})")
        if bad:
            raise ConfigError(f"augment: out of range: {', '.join(bad)} (each *_p in [0, 1], sizes >= 0, "
                              "reflection_amplitude [lo, hi] with 0 <= lo <= hi, reflection_sigma > 0, "
                              "drop_fraction in [0, 1))")

    def check_window(self, window_size: int) -> None:
        """A shift or burst must leave a point of a `window_size`-point window (data.sensor_window_size)."""
        if self.enabled and max(self.shift_max, self.burst_max) >= window_size:
            raise ConfigError(f"augment.shift_max ({self.shift_max}) and augment.burst_max ({self.burst_max}) must "
                              f"be < data.sensor_window_size ({window_size})")
