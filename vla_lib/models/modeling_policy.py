"""The Stage-1 heads: SensorEncoder + Action Expert, and the policy module that joins them to cached VL features.

No ground truth ever enters the model: the expert decodes the chunk from learned horizon queries attending to the
fused VL + sensor condition (never from the target chunk itself, e.g. by adding the output to it; the optional
`residual_last_delta` adds the robot's measured last delta, an input, not a target). Inputs and
outputs are normalised with the training-split stats held as buffers; `forward` returns normalised actions for the
loss and `predict` physical units (mm, deg).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from vla_lib.dims import CONTACT_DIMS, POSE_DIMS
from vla_lib.models.configuration_policy import PolicyConfig
from vla_lib.models.fusion import FUSIONS, adopt
from vla_lib.models.inputs import PolicyInputs


class SensorEncoder(nn.Module):
    """(B, T, 1026) -> (B, sensor_output_dim). Conv stack -> transformer -> masked mean over time -> projection."""

    def __init__(self, cfg: PolicyConfig):
        super().__init__()
        layers, c_in = [], cfg.sensor_channels
        for c_out in cfg.sensor_conv_channels:
            layers += [nn.Conv1d(c_in, c_out, 3, stride=2, padding=1), MaskedBatchNorm1d(c_out), nn.GELU(),
                       nn.Dropout(cfg.dropout)]
            c_in = c_out
        self.conv = nn.Sequential(*layers)
        self.to_model = nn.Identity() if c_in == cfg.sensor_dim else nn.Linear(c_in, cfg.sensor_dim)
        block = nn.TransformerEncoderLayer(cfg.sensor_dim, cfg.sensor_heads, cfg.sensor_ff, cfg.dropout,
                                           activation=_gelu, batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(block, cfg.sensor_layers, enable_nested_tensor=False)
        self.proj = nn.Sequential(nn.Linear(cfg.sensor_dim, cfg.sensor_output_dim), nn.LayerNorm(cfg.sensor_output_dim),
                                  nn.GELU(), nn.Dropout(cfg.dropout),
                                  nn.Linear(cfg.sensor_output_dim, cfg.sensor_output_dim))
        self.positional = cfg.sensor_positional_encoding
        self.length = cfg.sensor_length

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None,
                real: torch.Tensor | None = None) -> torch.Tensor:
        """`valid` (B, T) marks grid points that carry a sample; `real` (B,) the samples that have sensor data at
        all. Only real, valid points feed the batch-norm statistics (see MaskedBatchNorm1d)."""
        if x.shape[1] != self.length:  # resampled to the encoder's time axis; the mask follows (nearest point)
            x = nn.functional.interpolate(x.transpose(1, 2), size=self.length, mode="linear").transpose(1, 2)
            if valid is not None:
                valid = nn.functional.interpolate(valid.float().unsqueeze(1), size=self.length,
                                                  mode="nearest").squeeze(1) > 0.5
        seen = valid.float() if valid is not None else x.new_ones(x.shape[:2])  # (B, T): the point saw a sample
        real = x.new_ones(x.shape[0]) if real is None else real.to(seen.dtype)
        h = x.transpose(1, 2)
        for layer in self.conv:
            if isinstance(layer, nn.Conv1d):
                seen = _receptive_mask(seen, layer)
            if isinstance(layer, MaskedBatchNorm1d):
                h = layer(h, seen * real.view(-1, 1))
            else:
                h = layer(h)
        h = h.transpose(1, 2)  # (B, T', C)
        h = self.to_model(h)
        if self.positional:  # sinusoidal: adds order information without parameters
            h = h + _sinusoid(h.shape[1], h.shape[2], h.device, h.dtype)
        h = self.transformer(h)
        if valid is not None:  # pool over the time steps whose receptive field saw valid samples
            # a window with no valid point pools uniformly (its sample takes the null embedding anyway); no host sync
            keep = torch.where(seen.sum(1, keepdim=True) == 0, torch.ones_like(seen), seen)
            pooled = (h * keep.unsqueeze(-1)).sum(1) / keep.sum(1, keepdim=True).clamp(min=1e-6)
        else:
            pooled = h.mean(1)
        return self.proj(pooled)


class MaskedBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d whose training statistics (batch and running) come from the masked-in points only.

    Samples without sensor data still run through the encoder (choosing the null embedding per sample needs no host
    sync and keeps one graph), but as all-zero windows they would drag the running statistics towards zero: after 50
    such batches eval-mode outputs were ~8x their train-mode scale. A batch with no counted point leaves the running
    statistics untouched. Same parameters and buffers as nn.BatchNorm1d, so checkpoints keep loading.
    """

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:  # x (B, C, T), mask (B, T)
        if not self.training or mask is None:
            return super().forward(x)
        out_dtype, x = x.dtype, x.float()  # statistics in fp32 also under bf16 autocast (counts, sums of squares)
        w = mask.float().unsqueeze(1)  # (B, 1, T)
        n = w.sum()
        has = n > 0
        n_safe = n.clamp(min=1.0)
        mean = (x * w).sum((0, 2)) / n_safe
        var = (((x - mean[None, :, None]) ** 2) * w).sum((0, 2)) / n_safe
        with torch.no_grad():  # running stats: unbiased variance, momentum as nn.BatchNorm1d; skipped when n == 0
            m = self.momentum if self.momentum is not None else 0.1
            unbiased = var * n / (n - 1).clamp(min=1.0)
            self.running_mean.copy_(torch.where(has, (1 - m) * self.running_mean + m * mean.detach(),
                                                self.running_mean))
            self.running_var.copy_(torch.where(has, (1 - m) * self.running_var + m * unbiased.detach(),
                                               self.running_var))
            self.num_batches_tracked.add_(has.to(self.num_batches_tracked.dtype))
        # no counted point: normalise with the running statistics (those samples take the null embedding anyway)
        mean = torch.where(has, mean, self.running_mean.to(mean.dtype))
        var = torch.where(has, var, self.running_var.to(var.dtype))
        y = (x - mean[None, :, None]) * torch.rsqrt(var[None, :, None] + self.eps)
        return (y * self.weight[None, :, None] + self.bias[None, :, None]).to(out_dtype)


def _receptive_mask(seen: torch.Tensor, conv: nn.Conv1d) -> torch.Tensor:
    """(B, T) -> (B, T'): an output point of `conv` counts when its receptive field holds a counted input point.

    Written as pad + unfold + max over the conv's own kernel, stride and padding. The adaptive max pool used before
    gives the same windows only for odd input lengths, and with it the sensor encoder compiled by Inductor on CUDA,
    in training mode, gave other losses than eager and NaN gradients from the first step (eager, aot_eager, eval mode
    and each layer compiled alone were right; the pool compiled alone matched eager, so the fault is in how Inductor
    fused it into this graph). With this form compiled equals eager within bf16 noise (scripts/gpu_check.py)."""
    (k,), (s,), (p,), (d,) = conv.kernel_size, conv.stride, conv.padding, conv.dilation
    if d != 1 or isinstance(conv.padding, str):
        raise ValueError("the sensor mask follows only undilated convolutions with numeric padding")
    return nn.functional.pad(seen, (p, p)).unfold(-1, k, s).amax(-1)


def _gelu(x: torch.Tensor) -> torch.Tensor:
    # Not `F.gelu` itself: that would let nn.TransformerEncoderLayer take its fused inference kernel in eval mode
    # without autocast, which computes differently from training and fails under torch.compile (stride assertion).
    return nn.functional.gelu(x)


def _sinusoid(n: int, d: int, device, dtype) -> torch.Tensor:
    pos = torch.arange(n, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, d, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / d))
    pe = torch.zeros(n, d, device=device)
    pe[:, 0::2], pe[:, 1::2] = torch.sin(pos * freq), torch.cos(pos * freq[: d // 2])
    return pe.to(dtype)


class ActionExpert(nn.Module):
    """Learned horizon queries attend (transformer decoder) to the fused condition (`model.fusion`, models/fusion.py)
    and the proprioception token -> (B, H, action_dim)."""

    def __init__(self, cfg: PolicyConfig):
        super().__init__()
        d = cfg.expert_hidden
        self.fusion = cfg.fusion if cfg.sensor_enabled else "none"
        adopt(self, FUSIONS[self.fusion](cfg))  # its layers first: the parameter order checkpoints were saved in
        self.history = nn.Linear(cfg.history_steps * POSE_DIMS, d) if cfg.history_steps else None
        # the "no history" token (history dropout, history until contact): a learned embedding, not the token of zero
        # deltas, which is also the token of an arm moving at the mean speed (dropping would blur the samples that do)
        self.history_null = nn.Parameter(torch.zeros(d)) if cfg.history_steps and (
            cfg.history_dropout or cfg.history_until_contact) else None
        self.contact = nn.Linear(CONTACT_DIMS, d) if cfg.contact_memory else None
        self.queries = nn.Parameter(torch.randn(1, cfg.horizon, d))
        layer = nn.TransformerDecoderLayer(d, cfg.expert_heads, cfg.expert_ff, cfg.dropout, batch_first=True)
        self.decoder = nn.TransformerDecoder(layer, cfg.expert_layers)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, cfg.action_dim)

    def forward(self, vl: torch.Tensor, vl_mask: torch.Tensor, sensor: torch.Tensor | None,
                history: torch.Tensor | None = None, contact: torch.Tensor | None = None,
                history_kept: torch.Tensor | None = None) -> torch.Tensor:
        """`history_kept` (B,) bool: the samples whose token is the measured history (the others get `history_null`);
        None: every sample's."""
        cond = self.condition(vl, vl_mask, sensor)
        if self.history is not None:  # (B, K, 6) normalised -> one more memory token
            tok = self.history(history.flatten(1))
            if history_kept is not None:
                tok = torch.where(history_kept.view(-1, 1), tok, self.history_null.to(tok.dtype))
            cond = torch.cat([cond, tok.unsqueeze(1)], 1)
        if self.contact is not None:  # (B, 4): in contact, mm since the onset -> one more memory token
            cond = torch.cat([cond, self.contact(contact.to(cond.dtype)).unsqueeze(1)], 1)
        h = self.decoder(self.queries.expand(vl.shape[0], -1, -1), cond)
        return self.head(self.norm(h))


class Stage1Policy(nn.Module):
    """SensorEncoder + ActionExpert over cached VL features, with the normalisation stats as buffers."""

    def __init__(self, cfg: PolicyConfig, action_mean=None, action_std=None, sensor_mean=None, sensor_std=None,
                 action_held=None):
        """`action_held` (action_dim,) bool: dimensions `predict` returns as their training-split mean
        (`NormStats.held_actions`; default: the gripper's)."""
        super().__init__()
        unset = [k for k in ("vl_dim", "horizon", "sensor_enabled", "sensor_length") if getattr(cfg, k) in (None, 0)
                 and k != "sensor_enabled"] + (["sensor_enabled"] if cfg.sensor_enabled is None else [])
        if unset:
            raise ValueError(f"PolicyConfig fields {unset} are not resolved: build the config through RunConfig, and "
                             "vl_dim from the backbone's hidden size")
        self.config = cfg
        self.sensor_encoder = SensorEncoder(cfg) if cfg.sensor_enabled else None
        # Missing sensor: a learned embedding chosen by the mask, never zeros passed through the encoder.
        self.null_sensor = nn.Parameter(torch.zeros(cfg.sensor_output_dim)) if cfg.sensor_enabled else None
        self.expert = ActionExpert(cfg)
        self.register_buffer("action_mean", _buf(action_mean, cfg.action_dim, 0.0))
        self.register_buffer("action_std", _buf(action_std, cfg.action_dim, 1.0))
        self.register_buffer("sensor_mean", _buf(sensor_mean, cfg.sensor_channels, 0.0))
        self.register_buffer("sensor_std", _buf(sensor_std, cfg.sensor_channels, 1.0))
        self.register_buffer("action_held", _held(action_held, cfg.action_dim))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # heads saved before `action_held` existed held the gripper alone: the default
        state_dict.setdefault(prefix + "action_held", _held(None, self.config.action_dim))
        # heads trained with history dropout before its token existed gave a dropped sample the token of zero deltas,
        # the history layer's bias: that token, so that training on from these weights sees what it saw (predictions
        # never read it; an exact resume of such a run is refused: its optimizer state has one parameter less)
        bias = state_dict.get(prefix + "expert.history.bias")
        if self.expert.history_null is not None and bias is not None:
            state_dict.setdefault(prefix + "expert.history_null", bias.clone())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: PolicyInputs) -> torch.Tensor:
        """Normalised (B, H, action_dim) from one `PolicyInputs` (raw sensor window and history: the stats buffers
        normalise them here, so every caller passes physical values)."""
        s = None
        if self.sensor_encoder is not None:
            # No "skip if no sample has sensor" shortcut: deciding it is a host sync every step (and impossible inside
            # a CUDA graph); the mask picks the null embedding per sample instead.
            has = x.has_sensor
            w = x.sensor
            if self.config.normalize_sensor_inputs:
                w = (w - self.sensor_mean) / self.sensor_std
            w = w * x.sensor_mask.unsqueeze(-1).to(w.dtype)  # invalid points carry no value (and are masked)
            enc = self.sensor_encoder(w, x.sensor_mask, has)
            s = torch.where(has.view(-1, 1), enc, self.null_sensor.to(enc.dtype).expand(len(has), -1))
        h, contact = self._history(x), self._contact(x)
        out = self.expert(x.vl, x.vl_mask, s, h, contact, self._history_kept(h, contact))
        if self.config.residual_last_delta:  # normalised: last + c * std in physical units; the gripper keeps its mean
            last = nn.functional.pad(h[:, -1], (0, out.shape[-1] - POSE_DIMS))
            out = out + last.unsqueeze(1).to(out.dtype)
        return out

    def _history(self, x: PolicyInputs) -> torch.Tensor | None:
        """The last K pose deltas, normalised with the action stats (B, K, 6), or None when K = 0."""
        if not self.config.history_steps:
            return None
        if x.history.shape[1] < self.config.history_steps:
            raise ValueError(f"the policy needs the robot's last {self.config.history_steps} pose deltas "
                             f"(history), got {tuple(x.history.shape)}")
        h = x.history[:, -self.config.history_steps:, :POSE_DIMS].to(x.vl.dtype)
        return (h - self.action_mean[:POSE_DIMS]) / self.action_std[:POSE_DIMS]

    def _contact(self, x: PolicyInputs) -> torch.Tensor | None:
        """The contact memory the expert reads (None when the heads have no such token). It comes from the sensor's
        force: a sample without sensor data has none (zeros, as in the ablation)."""
        if self.expert.contact is None:
            return None
        if x.contact is None:
            raise ValueError("these heads were trained with model.contact_memory: the inputs must carry the contact "
                             "memory (VLAPolicy.act / predict: contact=, a vla_lib.data.contact.ContactMemory value "
                             "per tick, which the runtime's loop passes)")
        if self.sensor_encoder is None:
            return torch.zeros_like(x.contact)
        return x.contact * x.has_sensor.view(-1, 1).to(x.contact.dtype)

    def _history_kept(self, h: torch.Tensor | None, contact: torch.Tensor | None) -> torch.Tensor | None:
        """Which samples' proprioception token sees their history (None: all of them): in training not a
        `history_dropout` share (drawn on the device per sample: no host sync, static shapes); with
        `history_until_contact` not those in contact (the contact memory's flag)."""
        kept = None
        if h is not None and self.training and self.config.history_dropout:
            kept = torch.rand(h.shape[0], device=h.device) >= self.config.history_dropout
        if h is not None and self.config.history_until_contact:
            free = contact[:, 0] < 0.5
            kept = free if kept is None else kept & free
        return kept

    def normalize_actions(self, actions: torch.Tensor) -> torch.Tensor:
        return (actions - self.action_mean) / self.action_std

    def denormalize_actions(self, actions: torch.Tensor) -> torch.Tensor:
        return actions * self.action_std + self.action_mean

    @torch.no_grad()
    def predict(self, x: PolicyInputs) -> torch.Tensor:
        """(B, H, action_dim) in physical units (mm, deg). The held dimensions (the gripper, and a pose delta that
        never changed in the training split) carry no training signal: they are returned as their training-set
        value, not as an output that could only add noise."""
        out = self.denormalize_actions(self.forward(x))
        return torch.where(self.action_held, self.action_mean.to(out.dtype), out)

    def parameter_counts(self) -> dict[str, int]:
        count = lambda m: sum(p.numel() for p in m.parameters()) if m is not None else 0  # noqa: E731
        return {"sensor_encoder": count(self.sensor_encoder), "action_expert": count(self.expert),
                "null_sensor": self.null_sensor.numel() if self.null_sensor is not None else 0,
                "total_trainable": sum(p.numel() for p in self.parameters() if p.requires_grad)}


def _held(values, n: int) -> torch.Tensor:
    return torch.arange(n) >= POSE_DIMS if values is None else torch.as_tensor(values, dtype=torch.bool).clone()


def _buf(values, n: int, default: float) -> torch.Tensor:
    return torch.full((n,), default) if values is None else torch.as_tensor(values, dtype=torch.float32).clone()
