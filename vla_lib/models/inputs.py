"""What the heads see: one input type for training, evaluation, inference, the live loop and the CUDA graph.

A new input is added here, in the type and in its builders; every call site passes a `PolicyInputs`. Conventions,
the same everywhere: a sensor window is the raw force + A-line on the fixed grid with invalid points set to 0 *and*
masked out; a sample without sensor data has an all-False mask (the model takes its learned null embedding);
`history` is the robot's last K pose deltas (mm, deg; K may be 0); `contact` the contact memory
(`data.contact.ContactMemory`: in contact, tip displacement since the onset; zeros before contact or without sensor;
None where not given, which heads trained with it refuse: zeros would read "not in contact" and drive the tip on).
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch

from vla_lib.data.timeline import SensorWindow
from vla_lib.dims import CONTACT_DIMS, POSE_DIMS


@dataclass
class PolicyInputs:
    vl: torch.Tensor  # (B, T, D) float: pooled VL features (per-view tokens + instruction token)
    vl_mask: torch.Tensor  # (B, T) bool: tokens that exist (a missing view is masked)
    sensor: torch.Tensor  # (B, W, C) float: raw sensor window on the fixed grid, invalid points 0
    sensor_mask: torch.Tensor  # (B, W) bool: grid points that carry a sample
    history: torch.Tensor  # (B, K, POSE_DIMS) float: the robot's last K pose deltas, oldest first
    contact: torch.Tensor | None = None  # (B, CONTACT_DIMS) float; None: not given

    @property
    def has_sensor(self) -> torch.Tensor:
        """(B,) bool: the sample has sensor data at all (computed on the device: no host sync)."""
        return self.sensor_mask.any(1)

    def to(self, device, non_blocking: bool = False) -> "PolicyInputs":
        return PolicyInputs(**{k: v.to(device, non_blocking=non_blocking) for k, v in self.tensors().items()})

    def tensors(self) -> dict[str, torch.Tensor]:
        """The inputs given (an optional one left out is absent)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def without_sensor(self) -> "PolicyInputs":
        """The same inputs with the sensor removed (the ablation): every sample takes the null embedding, and the
        heads give a sample without sensor data no contact memory (the memory comes from the sensor's force)."""
        return PolicyInputs(self.vl, self.vl_mask, torch.zeros_like(self.sensor),
                            torch.zeros_like(self.sensor_mask), self.history, self.contact)


def inputs_from_batch(batch: dict, device) -> PolicyInputs:
    """From a collated training/evaluation batch (`data.batches.collate`): features fp16 -> fp32 on the device."""
    return PolicyInputs(vl=batch["vl"].to(device, non_blocking=True).float(),
                        vl_mask=batch["vl_mask"].to(device, non_blocking=True),
                        sensor=batch["sensor"].to(device, non_blocking=True),
                        sensor_mask=batch["sensor_mask"].to(device, non_blocking=True),
                        history=batch["history"].to(device, non_blocking=True),
                        contact=batch["contact"].to(device, non_blocking=True))


def inputs_from_observation(features: torch.Tensor, feature_mask: torch.Tensor, sensor_windows=None, history=None,
                            contact=None, *, window: int, channels: int, device) -> PolicyInputs:
    """From a replay tick, a live observation or an inference call: `sensor_windows` a batched SensorWindow (values
    (B, W, C), valid (B, W)) or None (no sensor); `history` (B, K, POSE_DIMS) or None (K = 0); `contact`
    (B, CONTACT_DIMS) or None (not given)."""
    b = features.shape[0]
    if sensor_windows is None:
        sensor = torch.zeros(b, window, channels, device=device)
        mask = torch.zeros(b, window, dtype=torch.bool, device=device)
    else:
        if not isinstance(sensor_windows, SensorWindow):  # a bare array cannot say which of its points are samples
            raise TypeError("the sensor window must be a vla_lib.data.timeline.SensorWindow(values, valid) (a "
                            f"dataset sample's 'sensor' and 'sensor_mask'), got {type(sensor_windows).__name__}")
        sensor = torch.as_tensor(np.asarray(sensor_windows.values, np.float32), device=device)
        mask = torch.as_tensor(np.asarray(sensor_windows.valid, bool), device=device)
        if sensor.ndim != 3 or sensor.shape[-1] != channels or mask.shape != sensor.shape[:2]:
            raise ValueError(f"sensor window must be values (B, T, {channels}) with valid (B, T), got "
                             f"{tuple(sensor.shape)} and {tuple(mask.shape)}")
        sensor = torch.where(mask.unsqueeze(-1), sensor, torch.zeros((), device=device))  # no sample: no value
    hist = torch.zeros(b, 0, POSE_DIMS, device=device) if history is None else \
        torch.as_tensor(np.asarray(history, np.float32), device=device)
    touch = None if contact is None else torch.as_tensor(np.asarray(contact, np.float32), device=device)
    if touch is not None and touch.shape != (b, CONTACT_DIMS):
        raise ValueError(f"the contact memory must be (B, {CONTACT_DIMS}), got {tuple(touch.shape)}")
    return PolicyInputs(features.to(device, torch.float32), feature_mask.to(device), sensor, mask, hist, touch)


def example_inputs(cfg, n_tokens: int, device, random: bool = False) -> PolicyInputs:
    """Batch-1 inputs of the heads' shapes (graph buffers, timing): zeros, or random features/sensor."""
    make = torch.randn if random else torch.zeros
    return PolicyInputs(vl=make(1, n_tokens, cfg.vl_dim, device=device),
                        vl_mask=torch.ones(1, n_tokens, dtype=torch.bool, device=device),
                        sensor=make(1, cfg.sensor_length, cfg.sensor_channels, device=device),
                        sensor_mask=torch.ones(1, cfg.sensor_length, dtype=torch.bool, device=device),
                        history=torch.zeros(1, cfg.history_steps, POSE_DIMS, device=device),
                        contact=torch.zeros(1, CONTACT_DIMS, device=device) if cfg.contact_memory else None)
