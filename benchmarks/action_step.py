"""The action step at batch 1 (SensorEncoder + Action Expert, the published model's shapes): eager fp32, eager
under bf16 autocast, and replayed as a CUDA graph. Median and p95 over repeats, device synchronised.

    python benchmarks/action_step.py --preset original
"""
from __future__ import annotations

import argparse

import torch

from vla_lib.config import RunConfig
from vla_lib.evaluation.latency import timed_ms
from vla_lib.models.action_graph import ActionStep
from vla_lib.models.inputs import example_inputs
from vla_lib.models.modeling_policy import Stage1Policy


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="original")
    ap.add_argument("--history-steps", type=int, default=None, help="default: the preset's")
    ap.add_argument("--repeats", type=int, default=200)
    args = ap.parse_args()
    model = {"preset": args.preset, "vl_dim": 2048}  # the 3B backbone's width
    if args.history_steps is not None:
        model["history_steps"] = args.history_steps
    cfg = RunConfig.from_dict({"model": model}).model
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    heads = Stage1Policy(cfg).to(device).eval()
    x = example_inputs(cfg, 6, device, random=True)
    rows = {}
    with torch.no_grad():
        rows["eager fp32"] = timed_ms(lambda: heads.predict(x), device, args.repeats, 10)
        if device.type == "cuda":
            def bf16():
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    return heads.predict(x)
            rows["eager bf16 autocast"] = timed_ms(bf16, device, args.repeats, 10)
            step = ActionStep(heads, n_tokens=6)
            ref = bf16().float()
            got = step(x).float()
            print(f"graph vs eager bf16 max abs diff: {(got - ref).abs().max().item():.3g}")
            rows["CUDA graph bf16"] = timed_ms(lambda: step(x), device, args.repeats, 10)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"action step, batch 1, preset {args.preset} (history {cfg.history_steps}), {name}:")
    for k, (p50, p95) in rows.items():
        print(f"  {k:22s} p50 {p50:7.3f} ms   p95 {p95:7.3f} ms")


if __name__ == "__main__":
    main()
