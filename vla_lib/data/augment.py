"""Sensor-window augmentation of training samples (the `augment:` section, data/configuration_augment.py).

`augment_window` is a pure function of a window, its config and a generator. `TrainingAugmentation` gives it a
generator drawn from (train.seed, epoch, sample index) alone, never from a global RNG or the worker process: a
resumed run, any number of loader workers and any rank see the same augmentation of a sample in an epoch. Only the
training split's `SampleDataset` holds one; validation, evaluation, replay, live and closed loop never augment.

A window stays a SensorWindow throughout: every point marked invalid is 0 and masked, and a window without any
valid point (a session without sensor) is returned as it is.
"""
from __future__ import annotations

import math

import numpy as np
import torch

_STREAM = 0x5E45  # keeps these generators apart from any other seeded by (seed, epoch, index)


def augment_window(values: np.ndarray, valid: np.ndarray, cfg, rng: np.random.Generator
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(values (W, 1 + A) float32, valid (W,) bool) augmented as `cfg` (an AugmentConfig) says, as new arrays:
    first the values of the valid points, then the time shift, then the points marked invalid."""
    if not valid.any():
        return values, valid
    values = values.copy()
    values[valid] = _jitter(values[valid], cfg, rng)
    values, valid = _shift(values, valid, cfg, rng)
    valid = _drop(valid, cfg, rng)
    values[~valid] = 0.0
    return values, valid


def _chance(rng: np.random.Generator, p: float) -> bool:
    return p > 0 and rng.random() < p


def _jitter(rows: np.ndarray, cfg, rng) -> np.ndarray:
    """The valid rows (N, 1 + A), changed in place: reflections, speckle, gain and offset on the A-line (in the
    order a detector would add them), an offset on the force."""
    force, aline = rows[:, 0], rows[:, 1:]  # views: the changes land in `rows`
    if cfg.reflections_max >= 1 and _chance(rng, cfg.reflection_p):
        aline += _reflections(aline, cfg, rng)
    if _chance(rng, cfg.speckle_p):
        aline *= np.maximum(0.0, 1.0 + cfg.speckle_std * rng.standard_normal(aline.shape, dtype=np.float32))
    if _chance(rng, cfg.gain_p):
        aline *= np.float32(math.exp(rng.uniform(-math.log1p(cfg.gain), math.log1p(cfg.gain))))
    if _chance(rng, cfg.aline_offset_p):
        aline += np.float32(rng.uniform(-cfg.aline_offset, cfg.aline_offset))
    if _chance(rng, cfg.force_offset_p):
        force += np.float32(rng.uniform(-cfg.force_offset_n, cfg.force_offset_n))
    return rows


def _reflections(aline: np.ndarray, cfg, rng) -> np.ndarray:
    """(A,) 1 .. reflections_max Gaussian peaks at random depths, each U(lo, hi) x the window's peak height above
    its median (of the mean A-line): a static reflector, the same in every row of the window."""
    mean = aline.mean(0)
    height = float(mean.max() - np.median(mean))
    n = int(rng.integers(1, cfg.reflections_max + 1))
    centres = rng.uniform(0, aline.shape[1], n)
    amplitudes = rng.uniform(*cfg.reflection_amplitude, n) * height
    depth = np.arange(aline.shape[1])
    peaks = amplitudes[:, None] * np.exp(-0.5 * ((depth[None] - centres[:, None]) / cfg.reflection_sigma) ** 2)
    return peaks.sum(0).astype(np.float32)


def _shift(values: np.ndarray, valid: np.ndarray, cfg, rng) -> tuple[np.ndarray, np.ndarray]:
    """The window rolled by 1 .. shift_max grid points, later or earlier; the points that wrapped around are
    invalid (they hold samples from the window's other end)."""
    if not (cfg.shift_max >= 1 and _chance(rng, cfg.shift_p)):
        return values, valid
    s = int(rng.integers(1, min(cfg.shift_max, len(valid) - 1) + 1)) * (1 if rng.random() < 0.5 else -1)
    values, valid = np.roll(values, s, axis=0), np.roll(valid, s)
    if s > 0:
        valid[:s] = False
    else:
        valid[s:] = False
    return values, valid


def _drop(valid: np.ndarray, cfg, rng) -> np.ndarray:
    """Grid points marked invalid: scattered ones, one burst of consecutive ones, or (drop_sensor_p) all of them."""
    valid = valid.copy()
    if _chance(rng, cfg.drop_p):
        valid &= rng.random(len(valid)) >= cfg.drop_fraction
    if cfg.burst_max >= 1 and _chance(rng, cfg.burst_p):
        n = int(rng.integers(1, min(cfg.burst_max, len(valid)) + 1))
        start = int(rng.integers(0, len(valid) - n + 1))
        valid[start:start + n] = False
    if _chance(rng, cfg.drop_sensor_p):
        valid[:] = False
    return valid


class TrainingAugmentation:
    """`augment_window` for the training split: sample i in epoch e always gets the generator of
    (seed, e, i). The trainer sets the epoch before each epoch's loader iteration."""

    def __init__(self, cfg, seed: int):
        self.cfg, self.seed = cfg, int(seed) % 2**63
        # Shared memory: the loader's workers live for the whole run and read the epoch set in the main process
        # (each iter() of the loader drains the workers before it hands out the new epoch's indices).
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(int(epoch))

    def generator(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, int(index), _STREAM])

    def __call__(self, values: np.ndarray, valid: np.ndarray, index: int) -> tuple[np.ndarray, np.ndarray]:
        return augment_window(values, valid, self.cfg, self.generator(index))


def training_augmentation(cfg) -> TrainingAugmentation | None:
    """The training split's augmentation for a run config (`augment`, seeded by `train.seed`); None when off."""
    return TrainingAugmentation(cfg.augment, cfg.train.seed) if cfg.augment.enabled else None
