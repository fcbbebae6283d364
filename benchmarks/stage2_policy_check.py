"""A Stage-2 checkpoint at inference, against the training model: how far `VLAPolicy`'s features are from the ones
the heads were trained on, with the adapter unmerged (the default in bf16/fp16) and merged into the base weights.

    python benchmarks/stage2_policy_check.py --run /tmp/s2/8_off        # a run of benchmarks/stage2_training_run.py

Prints, over a few samples of mixed layouts: the relative distance ||a - b|| / ||b|| of the pooled features of
(training model: peft LoRA unmerged, our LM path, cached vision tokens) vs (policy, adapter unmerged) and vs (policy,
adapter merged), and the policy's encode time.
"""
from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch

from vla_lib.config import RunConfig
from vla_lib.data.samples import SampleDataset, build_index
from vla_lib.policy.vla_policy import VLAPolicy
from vla_lib.policy.checkpoint import load_checkpoint
from vla_lib.stage2 import train_stage2 as s2


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True, help="a Stage-2 run's train.output_dir")
    ap.add_argument("--samples", type=int, default=8)
    args = ap.parse_args()
    ckpt_path = Path(args.run) / "checkpoints/qwen_vla_sensor_final.pt"
    cfg = RunConfig.from_dict(load_checkpoint(ckpt_path).run_config)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, backbone, _, _, cache = s2.setup(copy.deepcopy(cfg), device, say=lambda *a: None)
    state = torch.load(Path(args.run) / "checkpoints/resume_state.pt", weights_only=True)["model"]
    model.load_state_dict(state)
    model.eval()
    index = build_index(cfg.data)
    frames_of, _ = s2.sample_frames(index)
    rows = index.table.groupby("group").head(max(1, args.samples // 2)).index.tolist()[:args.samples]
    data = s2.FrameSamples(SampleDataset(index, cfg.data), frames_of)
    batch = s2.collate_frames([data[i] for i in rows])
    with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
        inputs = s2.InputBuilder(backbone, cfg, device, cache)(batch)
        trained = model.features(inputs["plan"], inputs["image_tokens"]).cpu()
    del model
    views = [index.view_paths(i) for i in rows]
    from peft.tuners.lora import LoraLayer

    policy = VLAPolicy.from_checkpoint(ckpt_path, device=device, tiny_model_dir=cfg.backbone.tiny_model_dir,
                                       random_weights=cfg.backbone.random_weights)
    lora_layers = [m for m in policy.backbone.model.modules() if isinstance(m, LoraLayer)]
    out = {}
    for label in ("unmerged" if lora_layers else "merged (the fp32 default)", "merged") if lora_layers else \
            ("merged (the fp32 default)",):
        if label == "merged":  # the same adapter folded into the base weights, in their dtype
            for m in lora_layers:
                m.merge()
        policy.encode(batch["instruction"], views)  # warm-up
        t0 = time.perf_counter()
        f, _ = policy.encode(batch["instruction"], views)
        if device == "cuda":
            torch.cuda.synchronize()
        out[label] = (rel(f.cpu(), trained), (time.perf_counter() - t0) * 1e3)
    print(f"device {device}, dtype {cfg.backbone.dtype}, {len(rows)} samples, instructions "
          f"{sorted(set(batch['instruction']))}")
    for k, (d, ms) in out.items():
        print(f"policy ({k} adapter) vs training model: relative feature distance {d:.4f}; encode {ms:.0f} ms")


if __name__ == "__main__":
    main()
