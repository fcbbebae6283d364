"""Stage-2 training throughput: one optimiser step (LoRA + a head) per batch, stock transformers beside ours.

    python benchmarks/stage2_throughput.py --random-weights     # the published 3B architecture, no download (GPU)
    python benchmarks/stage2_throughput.py --batches 1 2        # tiny VLM on CPU: proves the script runs

A step = VL forward with gradients through the LoRA-adapted language model (peft, lora section defaults: r 16 on
q/k/v/o), per-sample pooling, a linear head on the pooled tokens, MSE, backward, AdamW over LoRA + head; bf16
autocast on CUDA. Inputs are prepared beforehand (5 views of 640x360 -> 616x336, 264 tokens each, one instruction).
Variants, each with and without gradient checkpointing:
- stock:  `model.model(**processor_batch)` (transformers' forward, vision tower included), pooled with Stage 1's
          weights;
- pixels: the frozen vision tower without gradients, then our LM path (`vlm.qwen.encode_lm.lm_features`);
- cached: the merged vision tokens from the frame-level vision cache (computed once here), our LM path only;
- cached+compiled (CUDA): as cached, each decoder layer through one `torch.compile`d function.
Each row: the median of `--rounds` rounds (each the median of `--repeats` steps) and the rounds' range; samples/s and
peak memory at batch 1 and at the largest batch of `--batches` that fits (the best
samples/s is reported with its batch, and the largest batch that ran when it is another). An out-of-memory batch ends
that variant's search; "largest" means the largest of `--batches` tried.
"""
from __future__ import annotations

import argparse
import copy

import numpy as np
import torch

from vla_lib.config import BackboneConfig, LoraConfig
from vla_lib.evaluation.latency import random_frames, timed_ms
from vla_lib.stage2.lora import inject_lora, lora_parameter_count
from vla_lib.vlm.interface import load_backbone
from vla_lib.vlm.qwen.encode import prepare_inputs
from vla_lib.vlm.qwen.encode_lm import (compiled_layer, lm_features, plan_from_grids, plan_from_processor,
                                        vision_tokens)


def make_inputs(bb, peft_model, views, batch, device):
    frames = random_frames(views, 640, 360, 0)
    samples = [(frames, "Perform the insertion task", [True] * views)] * batch
    inputs = prepare_inputs(bb.processor, samples, bb.pixel_budget, bb.dtype)
    pix_plan = plan_from_processor(peft_model, inputs.batch, inputs.view_masks)
    grids = inputs.batch["image_grid_thw"].tolist()[:views]
    grid_plan = plan_from_grids(peft_model, bb.processor, [("Perform the insertion task", [True] * views, grids)]
                                * batch, "per_view", bb.pixel_budget)
    tokens = vision_tokens(peft_model, inputs.batch["pixel_values"].to(device), pix_plan.grid_thw.to(device))
    return {"batch": {k: v.to(device) for k, v in inputs.batch.items()}, "pix_plan": pix_plan.to(device),
            "grid_plan": grid_plan.to(device), "tokens": tokens.detach()}


def step_fn(variant, gc, peft_model, head, opt, data, device, layer_fn):
    base = peft_model.get_base_model()
    cuda = device.type == "cuda"

    def features():
        if variant == "stock":
            hidden = base.model(**data["batch"], use_cache=False).last_hidden_state
            return torch.bmm(data["pix_plan"].pool_weights, hidden.float())
        if variant == "pixels":
            tokens = vision_tokens(peft_model, data["batch"]["pixel_values"], data["pix_plan"].grid_thw)
            return lm_features(peft_model, data["pix_plan"], tokens, gc)
        return lm_features(peft_model, data["grid_plan"], data["tokens"], gc,
                           layer_fn if variant == "cached+compiled" else None)

    losses = []  # kept on the device (no sync inside the timing); checked before a figure is printed

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            f = features()
            loss = head(f.mean(1)).float().pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.detach())
    step.losses = losses
    return step


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--random-weights", action="store_true")
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--views", type=int, default=5)
    ap.add_argument("--batches", type=int, nargs="*", default=[1, 8, 16, 32, 64])
    ap.add_argument("--stock-batches", type=int, nargs="*", default=[1, 4, 8], help="batches of the stock variant")
    ap.add_argument("--variants", nargs="*", default=["stock", "pixels", "cached", "cached+compiled"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds per row (median and range reported)")
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    variants = [v for v in args.variants if cuda or v != "cached+compiled"]
    torch.manual_seed(0)
    bb = load_backbone(BackboneConfig(name_or_path=args.model, random_weights=args.random_weights,
                                      fast_vision="off"))
    peft_model = inject_lora(bb.model, LoraConfig())
    peft_model.train()
    hidden = bb.hidden_size
    head = torch.nn.Linear(hidden, 56).to(device)
    params = [p for p in peft_model.parameters() if p.requires_grad] + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=1e-5, fused=cuda or None)
    layer_fn = compiled_layer() if cuda else None
    print(f"device: {torch.cuda.get_device_name() if cuda else 'cpu'}, torch {torch.__version__}, backbone "
          f"{bb.name}, {bb.dtype}, "
          f"{sum(p.numel() for p in bb.model.parameters()) / 1e9:.3f} B parameters, LoRA "
          f"{lora_parameter_count(peft_model):,}", flush=True)
    rows = []
    for variant in variants:
        for gc in (True, False):
            if variant == "stock":
                if gc:
                    bb.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
                else:
                    bb.model.gradient_checkpointing_disable()
            best = None
            batches = args.stock_batches if variant == "stock" else args.batches
            for batch in batches:
                try:
                    if cuda:
                        torch.cuda.empty_cache(), torch.cuda.reset_peak_memory_stats()
                    data = make_inputs(bb, peft_model, args.views, batch, device)
                    step = step_fn(variant, gc, peft_model, head, opt, data, device, layer_fn)
                    # rounds x (median of repeats): the figure is the median of the rounds, the spread their range
                    rounds = [timed_ms(step, device, args.repeats, args.warmup if r == 0 else 1)[0]
                              for r in range(args.rounds)]
                    ms = float(np.median(rounds))
                    if not bool(torch.isfinite(torch.stack(step.losses)).all()):
                        print(f"  {variant} gc={gc} batch {batch}: a non-finite loss: no figure printed", flush=True)
                        break
                except torch.OutOfMemoryError:
                    opt.zero_grad(set_to_none=True)
                    print(f"  {variant} gc={gc} batch {batch}: out of memory", flush=True)
                    break
                except Exception as e:  # one variant failing must not lose the others' figures
                    opt.zero_grad(set_to_none=True)
                    print(f"  {variant} gc={gc} batch {batch}: failed: {type(e).__name__}: {str(e)[:300]}", flush=True)
                    break
                peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
                row = {"variant": variant, "grad ckpt": gc, "batch": batch, "ms/step": ms,
                       "min-max ms": f"{min(rounds):.0f}-{max(rounds):.0f}", "samples/s": batch * 1e3 / ms,
                       "peak GiB": peak}
                print("  " + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                       for k, v in row.items()), flush=True)
                if batch == batches[0]:
                    rows.append({**row, "row": "first batch"})
                if best is None or row["samples/s"] > best["samples/s"]:
                    best = row
                largest = row
                del data
            if best is not None and best["batch"] != batches[0]:
                rows.append({**best, "row": "best samples/s"})
            if best is not None and largest["batch"] not in (batches[0], best["batch"]):
                rows.append({**largest, "row": "largest batch that fit"})
    bb.model.gradient_checkpointing_disable()
    import pandas as pd

    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda x: f"{x:.3g}"))


if __name__ == "__main__":
    main()
