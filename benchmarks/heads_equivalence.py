"""The heads compiled against eager on the same weights and batches, and the CUDA-graphed action step against eager:
the `heads_equivalence` step of scripts/gpu_check.py (in a process of its own beside the other steps).

    python benchmarks/heads_equivalence.py --params params/gpu_check.yaml --json OUT.json

Runs `compare_compiled_to_eager` on the params' heads (both compile modes in bf16, `default` in fp32), the same for
the heads with the contact memory (`model.contact_memory`, the demo's: its condition token through the compiled
graph), and `action_graph_vs_eager` for both (the real-time loop's batch-1 step replayed as a CUDA graph, the memory's
input included). Writes one JSON; gpu_check judges it.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from vla_lib.config import RunConfig
from vla_lib.data.samples import build_index


def compare_compiled_to_eager(params: str, steps: int = 50, batch_size: int = 64,
                              modes: tuple = ("default", "reduce-overhead"), n_batches: int = 8,
                              fp32_modes: tuple = ("default",), overrides: dict | None = None) -> dict:
    """The heads of `params`' model section, dropout 0, trained `steps` AdamW steps on the same batches (the params'
    sessions, random 2048-d VL features with each sample's view mask), compiled in each of `modes` under bf16
    autocast on CUDA (as training runs) and in each of `fp32_modes` in fp32 without TF32, and eager in both.

    Whether the compiled graph computes eager's function is asked at every step, on the compiled run's own weights:
    a shadow eager copy loads them and computes the same batch's loss and gradient norm (`step_loss_rel_max`,
    `step_grad_rel_max`: the largest relative differences over the run). Free-running trajectories are reported
    too (`rel_diff_last`, `rel_to_fp32_last`, `bf16_noise_floor`: eager bf16 against eager fp32 at the last step),
    but they only describe chaos: two float orders of the same training part by orders of magnitude within 50
    AdamW steps (fp32 compiled vs eager: 1e-7 at step 1, 4e-3 at step 50 on an H100), so they test nothing.
    `overrides`: settings on top of the params' (e.g. the contact memory). Raises on any non-finite loss or gradient
    norm."""
    import copy
    import math

    from vla_lib.train import loss_fn
    from vla_lib.train_objective import param_groups

    cfg, index, data, heads = _check_setup(params, overrides)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gen = torch.Generator().manual_seed(0)
    batches = [_check_batch(index, data, torch.randperm(len(index), generator=gen)[:batch_size].tolist(), gen)
               for _ in range(n_batches)]
    base = heads.to(device).train()

    def loss_and_grad(model, batch, bf16):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16 and device.type == "cuda"):
            loss = loss_fn(model, batch, cfg, 1.0, device)[0]  # training's own loss
        loss.backward()
        return loss, torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.clip_grad_norm)

    def run(mode, bf16=True):
        """(losses, per-step relative loss and gradient-norm differences to eager on the same weights)."""
        torch._dynamo.reset()
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # fp32 runs: true fp32
        model, shadow = copy.deepcopy(base), (copy.deepcopy(base) if mode != "eager" else None)
        if mode != "eager":
            model.compile(mode=mode)
        for p in model.parameters():  # as the Trainer: gradients zeroed in place (see train.Trainer.setup)
            p.grad = torch.zeros_like(p)
        opt = torch.optim.AdamW(param_groups(model, cfg.train), fused=device.type == "cuda" or None)
        losses, step_diff = [], []
        for k in range(steps):
            batch = batches[k % len(batches)]
            if shadow is not None:  # eager on this run's current weights (module.compile keeps the state's keys)
                shadow.load_state_dict(model.state_dict())
                ref_loss, ref_grad = (float(v.detach()) for v in loss_and_grad(shadow, batch, bf16))
                shadow.zero_grad(set_to_none=True)
            loss, grad = loss_and_grad(model, batch, bf16)
            opt.step()
            opt.zero_grad(set_to_none=False)
            losses.append((float(loss.detach()), float(grad)))
            if shadow is not None:
                step_diff.append((abs(losses[-1][0] - ref_loss) / abs(ref_loss),
                                  abs(losses[-1][1] - ref_grad) / max(abs(ref_grad), 1e-12)))
        bad = [k + 1 for k, (l, g) in enumerate(losses) if not (math.isfinite(l) and math.isfinite(g))]
        if bad:
            raise RuntimeError(f"{mode}: non-finite loss or gradient norm at steps {bad[:5]} (first: {losses[bad[0] - 1]})")
        return [l for l, _ in losses], step_diff

    out = {}
    eager = {True: run("eager")[0], False: run("eager", bf16=False)[0] if fp32_modes else None}
    for mode, bf16 in [(m, True) for m in modes] + [(m, False) for m in fp32_modes]:
        (losses, step_diff), ref = run(mode, bf16), eager[bf16]
        rel = [abs(a - b) / abs(b) for a, b in zip(losses, ref)]
        out[mode if bf16 else f"{mode}/fp32"] = {
            "step_loss_rel_max": max(d for d, _ in step_diff), "step_grad_rel_max": max(g for _, g in step_diff),
            "loss_last": losses[-1], "eager_last": ref[-1], "rel_diff_last": rel[-1], "rel_diff_max": max(rel),
            "loss_first": losses[0], "eager_first": ref[0], "rel_diff_first": rel[0],
            # how far this run ends from the fp32 eager trajectory (None without an fp32 reference)
            "rel_to_fp32_last": abs(losses[-1] - eager[False][-1]) / abs(eager[False][-1]) if eager[False] else None}
    if eager[False] is not None:
        out["bf16_noise_floor"] = abs(eager[True][-1] - eager[False][-1]) / abs(eager[False][-1])
    return out



def _check_setup(params: str, overrides: dict | None):
    """(config, index, dataset, heads) of a check: the params' heads (dropout 0; `overrides` on top) for the 3B
    backbone's 2048-d features, initialised from seed 0."""
    from vla_lib.data.normalization import compute_stats
    from vla_lib.data.samples import SampleDataset
    from vla_lib.train_data import build_model

    cfg = RunConfig.from_yaml(params).with_overrides({"model.dropout": 0.0, **(overrides or {})})
    index = build_index(cfg.data, verbose=False)
    torch.manual_seed(0)
    return cfg, index, SampleDataset(index, cfg.data), build_model(cfg, compute_stats(index), 2048)


def _check_batch(index, data, rows: list[int], gen: torch.Generator) -> dict:
    """The samples `rows` collated, with random 2048-d VL features under each sample's view mask and random
    contact-memory values (in contact or not, displacements of a few mm: the check's sessions may never touch)."""
    from vla_lib.data.batches import collate

    b = collate([data[i] for i in rows])
    b["vl_mask"] = torch.tensor([[p is not None for p in index.view_paths(i)] + [True] for i in rows])
    b["vl"] = torch.randn(len(rows), b["vl_mask"].shape[1], 2048, generator=gen)
    b["contact"] = torch.cat([torch.randint(0, 2, (len(rows), 1), generator=gen).float(),
                              torch.randn(len(rows), 3, generator=gen)], 1)
    return b


def action_graph_vs_eager(params: str, overrides: dict | None = None, device: str = "cuda") -> float | None:
    """The largest relative difference between the action step replayed as a CUDA graph (`models.action_graph`) and
    eager bf16 autocast on the same weights, over a few samples of `params`' data at batch 1 (None without CUDA,
    where the step runs eager; `device="cpu"` runs the same comparison eager against eager, to check this code)."""
    if device == "cuda" and not torch.cuda.is_available():
        return None
    from vla_lib.models.action_graph import ActionStep
    from vla_lib.models.inputs import inputs_from_batch

    _, index, data, heads = _check_setup(params, overrides)
    heads = heads.to(device).eval()
    gen = torch.Generator().manual_seed(1)
    step, worst = None, 0.0
    for i in torch.randperm(len(index), generator=gen)[:8].tolist():
        x = inputs_from_batch(_check_batch(index, data, [i], gen), device)
        step = step or ActionStep(heads, x.vl.shape[1], like=x, use_graph=device == "cuda")
        got = step(x).float()
        with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            ref = step.heads.predict(x).float()  # the graph's own bf16 weights, eager
        worst = max(worst, float((got - ref).norm() / ref.norm().clamp(min=1e-12)))
    return worst


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--params", default="params/gpu_check.yaml")
    ap.add_argument("--json", required=True)
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    start = time.time()
    steps, batch = (50, 64) if cuda else (5, 8)
    res = compare_compiled_to_eager(args.params, steps=steps, batch_size=batch,
                                    modes=("default", "reduce-overhead") if cuda else ("default",))
    memory = {"model.contact_memory": True}
    for mode, r in compare_compiled_to_eager(args.params, steps=steps, batch_size=batch, modes=("reduce-overhead",)
                                             if cuda else ("default",), fp32_modes=(), overrides=memory).items():
        if mode != "bf16_noise_floor":
            res[f"memory/{mode}"] = r
    graph = {"heads": action_graph_vs_eager(args.params), "memory": action_graph_vs_eager(args.params, memory)}
    with open(args.json, "w") as f:
        json.dump({"result": res, "action_graph_rel": graph, "wall_s": time.time() - start, "cuda": cuda}, f)


if __name__ == "__main__":
    main()
