"""The inference API: a checkpoint of either stage (heads + stats + config; Stage 2: + its LoRA adapter) joined with
its frozen VL backbone.

    policy = VLAPolicy.from_checkpoint("outputs/demo/train/checkpoints/qwen_vla_sensor_best.pt")
    chunk = policy.predict(instruction, [view1, ..., view5], sensor_window)  # (8, 7) mm / deg

Images may be paths, PIL images or HxWx3 uint8 arrays (None = a missing view, masked), and JPEG bytes when the
images are prepared on the device (`backbone.image_prep`, gpu by default on CUDA); they are fitted to the pixel budget
the checkpoint was trained with. The sensor window is a `data.timeline.SensorWindow(values, valid)`: the raw (65, 1026)
force + A-line window on the fixed grid and which of its points carry a sample (a dataset sample's `sensor` and
`sensor_mask`; None = no sensor: the learned null embedding); `history` the robot's last K end-effector pose deltas
(K = `policy.history_steps`, oldest first; what `vla_lib.data.timeline.pose_history` computes from the robot samples
stamped at or before now); `contact` the contact memory (`vla_lib.data.contact.ContactMemory`, one per episode,
updated every tick; needed when the checkpoint was trained with `model.contact_memory`). The split `encode` / `act`
is what the real-time loop
uses: the VL features refresh at their own rate, the action step runs at 10 Hz on the latest ones.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from vla_lib.config import RunConfig
from vla_lib.policy.checkpoint import CheckpointMismatchError, feature_mismatch, load_checkpoint
from vla_lib.models.action_graph import ActionStep
from vla_lib.data.timeline import SensorWindow
from vla_lib.dims import CONTACT_DIMS
from vla_lib.models.inputs import inputs_from_observation
from vla_lib.policy.adapter import apply_adapter
from vla_lib.vlm.cache_build import store_parts
from vla_lib.vlm.feature_store import fingerprint_of
from vla_lib.vlm.interface import load_backbone as _load_backbone
from vla_lib.vlm.interface import resolve_device


class VLAPolicy:
    def __init__(self, heads, run_config: RunConfig, stats, backbone=None, device: str | torch.device = "cpu",
                 cuda_graph: bool = True):
        self.heads = heads.to(device).eval()
        # On CUDA the single-observation action step replays a captured graph (bf16), built on first use
        self.cuda_graph = cuda_graph and torch.device(device).type == "cuda"
        self._step = None
        self.config = run_config
        self.stats = stats
        self.backbone = backbone
        self.features_identity = ""  # set by from_checkpoint: the fingerprint of the features `encode` gives
        self.device = torch.device(device)
        self.views = list(run_config.data.views)

    # -- construction ---------------------------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, path: str | Path, backbone: str | None = None, device: str = "auto",
                        load_backbone: bool = True, cuda_graph: bool = True, allow_backbone_mismatch: bool = False,
                        **backbone_overrides) -> "VLAPolicy":
        """Load heads, stats and config; refuse a checkpoint whose weights do not all load, or whose heads were
        trained on features of another backbone, pixel budget, dtype, pooling, views or processor (the checkpoint
        records the feature store's parts) unless `allow_backbone_mismatch=True`.

        `backbone`: another hub id / local path than the one in the checkpoint's config; `backbone_overrides`: any
        other BackboneConfig field (e.g. `random_weights=True`, `tiny_model_dir=...`). `load_backbone=False` gives
        the heads only (for cached features)."""
        ckpt = load_checkpoint(path)
        heads = ckpt.heads
        cfg = RunConfig.from_dict(ckpt.run_config)
        if backbone is not None:
            cfg.backbone.name_or_path = backbone
        for k, v in backbone_overrides.items():
            if not hasattr(cfg.backbone, k):
                raise TypeError(f"unknown backbone option {k!r}")
            setattr(cfg.backbone, k, v)
        dev = resolve_device(device)
        cfg.backbone.device = str(dev)
        if ckpt.stage == "stage2" and "image_prep" not in ckpt.features["parts"]:
            cfg.backbone.image_prep = "cpu"  # Stage 2 trained on CPU-prepared pixels (its vision cache): the same here
        vl = None
        identity = ckpt.features.get("fingerprint", "")
        if load_backbone:
            vl = _load_backbone(cfg.backbone)
            if vl.hidden_size != heads.config.vl_dim:
                raise CheckpointMismatchError(
                    f"{path}: the heads expect {heads.config.vl_dim}-d VL features but backbone "
                    f"{cfg.backbone.name_or_path!r} gives {vl.hidden_size}-d")
            if not ckpt.features:
                warnings.warn(f"{path} records no feature-store parts (saved without them): whether "
                              "this backbone gives the features its heads were trained on cannot be checked")
            live = store_parts(cfg, vl.parts())
            if ckpt.stage == "stage2":  # Stage 2: the LoRA adapter beside the heads, on the named backbone
                live.update(apply_adapter(vl, path, ckpt.features["parts"]["adapter"]))
            differs = feature_mismatch(ckpt.features.get("parts", {}), live) if ckpt.features else []
            adapter = [d for d in differs if d.startswith(("adapter:", "lora:"))]
            if adapter:  # never overridable: heads and adapter were trained together
                raise CheckpointMismatchError(f"{path}: the adapter beside it is not the one its heads were trained "
                                              f"with: {'; '.join(adapter)}")
            identity = fingerprint_of(live)
            if differs and not allow_backbone_mismatch:
                raise CheckpointMismatchError(
                    f"{path}: the heads were trained on other VL features than this backbone gives: "
                    + "; ".join(differs) + ". Load the backbone they were trained with, or pass "
                    "allow_backbone_mismatch=True (CLI: --allow-backbone-mismatch) to use it anyway")
        policy = cls(heads, cfg, ckpt.stats, vl, dev, cuda_graph)
        policy.features_identity = identity  # what its features are (caches of features key on it)
        return policy

    # -- the two halves -------------------------------------------------------------------------------------------
    def encode(self, instructions: list[str], views: list[list]) -> tuple[torch.Tensor, torch.Tensor]:
        """Batched VL features: `views[b]` holds one entry per configured view (None = missing)."""
        if self.backbone is None:
            raise RuntimeError("this policy was loaded without its backbone (load_backbone=False)")
        samples = []
        for instruction, ims in zip(instructions, views):
            if len(ims) != len(self.views):
                raise ValueError(f"expected {len(self.views)} views {self.views}, got {len(ims)}")
            samples.append(([im for im in ims if im is not None], instruction, [im is not None for im in ims]))
        # on the device when the backbone prepares there (backbone.image_prep: JPEG bytes accepted too)
        return self.backbone.encode(self.backbone.prepare(samples), self.config.cache.pooling)

    @torch.no_grad()
    def act(self, features: torch.Tensor, feature_mask: torch.Tensor, sensor_windows=None, history=None,
            contact=None) -> np.ndarray:
        """(B, H, 7) chunk in mm / deg from VL features, a batched SensorWindow (values (B, T, 1026), valid (B, T);
        None: no sensor), the robot's last pose deltas ((B, K, 6) mm / deg, oldest first; needed when the heads were
        trained with history) and the contact memory ((B, 4), `data.contact.ContactMemory`; needed when the heads
        were trained with it: a missing memory would read "not in contact" and drive the tip on)."""
        x = inputs_from_observation(features, feature_mask, sensor_windows, history, contact,
                                    window=self.config.data.sensor_window_size,
                                    channels=self.heads.config.sensor_channels, device=self.device)
        if self.cuda_graph and len(features) == 1:
            if self._step is None or not self._step.fits(x):
                self._step = ActionStep(self.heads, n_tokens=x.vl.shape[1], like=x)
            if self._step.fits(x):
                return self._step(x).float().cpu().numpy()
        return self.heads.predict(x).float().cpu().numpy()

    def warm_up(self, instruction: str, images: list, sensor_window=None, history=None) -> None:
        """One untimed encode and action step, before a real-time loop starts its threads: the fast encoder compiles
        and captures on its first call (tens of seconds on the 3B model) and the action step captures its CUDA graph
        on its first; a capture that overlapped the VL thread's launches failed on an H100 ("operation failed due to
        a previous error during capture")."""
        feats, mask = self.encode([instruction], [images])
        window = sensor_window.batched() if isinstance(sensor_window, SensorWindow) else sensor_window  # else refused
        self.act(feats, mask, window, None if history is None else np.asarray(history, np.float32)[None],
                 np.zeros((1, CONTACT_DIMS), np.float32))

    # -- one call -------------------------------------------------------------------------------------------------
    @property
    def history_steps(self) -> int:
        return self.heads.config.history_steps

    def predict(self, instruction: str, images: list, sensor_window=None, history=None, contact=None) -> np.ndarray:
        """(H, 7) chunk in mm / deg for one observation."""
        one = isinstance(sensor_window, SensorWindow)  # anything else is refused by inputs_from_observation
        sensor = sensor_window.batched() if one else sensor_window
        hist = None if history is None else np.asarray(history, np.float32)[None]
        touch = None if contact is None else np.asarray(contact, np.float32)[None]
        return self.predict_batch([instruction], [images], sensor, hist, touch)[0]

    def predict_batch(self, instructions: list[str], images: list[list], sensor_windows=None,
                      history=None, contact=None) -> np.ndarray:
        features, mask = self.encode(instructions, images)
        return self.act(features, mask, sensor_windows, history, contact)
