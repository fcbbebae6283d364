"""Stage-2 checkpoints at inference and evaluation: the heads file (Stage 1's format) + the peft adapter folder
beside it (`<name>.adapter-<sha>/`, the sha the heads file records), applied to the named backbone; and the held-out
features they need.

A Stage-2 checkpoint's feature parts carry the adapter's identity (`adapter`: SHA-1 of its tensors, `lora`: r,
alpha, targets). The live parts of a backbone with that adapter loaded carry the same, so they match; a Stage-1
feature store has none, so its fingerprint never matches and it is never used for a Stage-2 policy."""
from __future__ import annotations

from pathlib import Path

import torch


def apply_adapter(backbone, checkpoint: str | Path, sha: str, merge: bool | None = None) -> dict:
    """Load the adapter folder `<checkpoint stem>.adapter-<sha>/` onto `backbone.model` (a Stage2Backbone: its
    `set_model` rebuilds what the backbone made around the model); returns its live parts ({"adapter": the sha of
    the tensors found there, "lora"}). `merge` (default: in fp32 only) folds it into the base
    weights (no LoRA matmuls at inference); in bf16/fp16 the sum W + s·BA would be rounded to the base dtype, losing
    small updates, so the LoRA layers stay unmerged, as in training."""
    import json

    from vla_lib.models.checkpoint import CheckpointMismatchError
    from vla_lib.stage2.lora import adapter_dir_for, load_adapter, saved_adapter_sha

    folder = adapter_dir_for(checkpoint, sha)
    if not (folder / "adapter_model.safetensors").exists():
        raise CheckpointMismatchError(f"{checkpoint}: a Stage-2 checkpoint without its adapter folder {folder}")
    conf = json.loads((folder / "adapter_config.json").read_text())
    parts = {"adapter": saved_adapter_sha(folder), "lora": {"r": int(conf["r"]), "alpha": float(conf["lora_alpha"]),
                                                            "targets": sorted(conf["target_modules"])}}
    merge = backbone.dtype == torch.float32 if merge is None else merge
    adapted = load_adapter(backbone.model, folder, merge=merge)
    backbone.set_model(adapted if merge else adapted.get_base_model())  # unmerged: LoRA layers inside the same model
    return parts


class EncodedFeatures:
    """Features of a fixed list of samples computed by a policy's (adapted) backbone, in memory: the FeatureTable
    interface (`[i]` -> (features, mask)), for evaluating a Stage-2 checkpoint without any feature store."""

    def __init__(self, policy, index, batch_size: int = 8):
        feats, masks = [], []
        for start in range(0, len(index), batch_size):
            rows = range(start, min(start + batch_size, len(index)))
            f, m = policy.encode([index.table.at[i, "instruction"] for i in rows], [index.view_paths(i) for i in rows])
            feats.append(f.cpu()), masks.append(m.cpu())
        self.features = torch.cat(feats) if feats else torch.zeros(0)
        self.mask = torch.cat(masks) if masks else torch.zeros(0, dtype=torch.bool)

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i):
        return self.features[i], self.mask[i]
