"""Stage 2 on the tiny VLM: LoRA learns while the base stays frozen, the heads start from Stage 1, cached and
uncached vision give the same loss, per-sample pooling equals Stage 1's encoder, exact resume after SIGKILL, only
the training split augments."""
import copy

import numpy as np
import pytest
import torch

from vla_lib.stage2 import train_stage2 as s2


def _batch(cfg, backbone, cache, rows=None):
    """A batch mixing groups (different instructions and view sets: padded prompts) and its two input builds."""
    from vla_lib.data.samples import SampleDataset, build_index

    index = build_index(cfg.data)
    frames_of, frames = s2.sample_frames(index)
    groups = index.table.groupby("group").head(2).index.tolist() if rows is None else rows
    data = s2.FrameSamples(SampleDataset(index, cfg.data), frames_of)
    batch = s2.collate_frames([data[i] for i in groups])
    if cache is not None:
        cache.build(backbone, {k: frames[k] for f in batch["frames"] for k, _ in f}, log=lambda *a: None)
    return batch, index, groups




def test_lora_learns_base_frozen_heads_from_stage1(stage1_run):
    from vla_lib.policy.checkpoint import load_checkpoint

    cfg, _, ckpt_path = stage1_run
    model, backbone, ckpt, _, cache = s2.setup(copy.deepcopy(cfg), "cpu", say=lambda *a: None)
    stage1 = load_checkpoint(ckpt_path).heads.state_dict()
    for k, v in model.heads.state_dict().items():  # the heads are Stage 1's, every tensor
        torch.testing.assert_close(v, stage1[k], rtol=0, atol=0)
    base = {n: p.detach().clone() for n, p in model.vl.named_parameters() if "lora_" not in n}
    lora = {n: p.detach().clone() for n, p in model.vl.named_parameters() if "lora_" in n}
    assert lora and all(p.requires_grad for n, p in model.vl.named_parameters() if "lora_" in n)
    assert not any(p.requires_grad for n, p in model.vl.named_parameters() if "lora_" not in n)
    batch, _, _ = _batch(cfg, backbone, cache)
    inputs = s2.InputBuilder(backbone, cfg, "cpu", cache)(batch)
    # no weight decay: a parameter changes only through its gradient
    opt = torch.optim.AdamW([{"params": model.lora_parameters(), "lr": 1e-2},
                             {"params": [p for p in model.heads.parameters() if p.requires_grad], "lr": 1e-3}],
                            weight_decay=0.0)
    model.train()
    for step in range(2):  # lora_B starts at zero: its first step gives lora_A a gradient on the second
        loss, *_ = s2.stage2_loss(model, inputs, batch, cfg, 1.0)
        loss.backward()
        grads = {n: p.grad for n, p in model.vl.named_parameters() if "lora_" in n}
        must = [n for n in grads if "lora_B" in n or step == 1]
        assert all(grads[n] is not None and grads[n].abs().sum() > 0 for n in must), "a LoRA tensor got no gradient"
        assert all(p.grad is None for n, p in model.vl.named_parameters() if "lora_" not in n)
        opt.step(), opt.zero_grad()
    for n, p in model.vl.named_parameters():
        if "lora_" in n:
            assert not torch.equal(p, lora[n]), f"{n} did not change"
        else:
            assert torch.equal(p, base[n]), f"base weight {n} changed"


def test_cached_and_uncached_vision_give_the_same_loss_and_stage1_features(stage1_run):
    """Tolerance: 1e-5 relative (fp32, CPU; the vision tower runs on other batch compositions in the two paths)."""
    from vla_lib.vlm.interface import load_backbone
    from vla_lib.vlm.qwen.encode import encode, prepare_inputs
    from vla_lib.data.recorder_files import load_image

    cfg, _, _ = stage1_run
    model, backbone, _, _, cache = s2.setup(copy.deepcopy(cfg), "cpu", say=lambda *a: None)
    assert cache is not None  # auto: the default targets leave the vision tower frozen
    batch, index, rows = _batch(cfg, backbone, cache)
    assert len(set(batch["instruction"])) > 1  # prompts of different lengths: padding inside the batch
    model.eval()
    with torch.no_grad():
        cached = s2.InputBuilder(backbone, cfg, "cpu", cache)(batch)
        pixels = s2.InputBuilder(backbone, cfg, "cpu", None)(batch)
        # the LoRA features at initialisation (lora_B = 0) are Stage 1's encoder's, sample by sample (below)
        feats = model.features(cached["plan"], cached["image_tokens"])
        for p in model.lora_parameters():  # a trained-looking adapter: the LoRA path itself is compared too
            p.add_(0.05 * torch.randn_like(p))
        a = s2.stage2_loss(model, cached, batch, cfg, 1.0)
        b = s2.stage2_loss(model, pixels, batch, cfg, 1.0)
        torch.testing.assert_close(a[1], b[1], rtol=1e-5, atol=1e-7)
        assert not torch.allclose(model.features(cached["plan"], cached["image_tokens"]), feats)  # LoRA acts
    stock = load_backbone(copy.deepcopy(cfg.backbone))
    samples = [([load_image(p) for _, p in f], instr, m.tolist()) for f, instr, m
               in zip(batch["frames"], batch["instruction"], batch["view_mask"].bool())]
    ref, ref_mask = encode(stock, prepare_inputs(stock.processor, samples, stock.pixel_budget), cfg.cache.pooling)
    assert torch.equal(ref_mask, cached["plan"].token_mask)
    torch.testing.assert_close(feats, ref, rtol=1e-4, atol=1e-5)
    one = [encode(stock, prepare_inputs(stock.processor, [s], stock.pixel_budget), cfg.cache.pooling)[0]
           for s in samples]  # batch of one each: the batch does not leak between samples
    torch.testing.assert_close(feats, torch.cat(one), rtol=1e-4, atol=1e-5)


def test_loader_workers_plan_the_batch_as_the_main_process_does(stage1_run):
    """PlannedCollate in two forked loader workers: the same LM plan and cached tokens as InputBuilder in-process
    (the Stage-2 loop's host work moved off the step)."""
    from vla_lib.data.samples import SampleDataset, build_index

    cfg, _, _ = stage1_run
    _, backbone, _, _, cache = s2.setup(copy.deepcopy(cfg), "cpu", say=lambda *a: None)
    batch, index, rows = _batch(cfg, backbone, cache)
    builder = s2.InputBuilder(backbone, cfg, "cpu", cache)
    want = builder(batch)
    data = torch.utils.data.Subset(s2.FrameSamples(SampleDataset(index, cfg.data), s2.sample_frames(index)[0]), rows)
    loader = torch.utils.data.DataLoader(data, batch_size=len(rows), num_workers=2, collate_fn=s2.PlannedCollate(builder),
                                         multiprocessing_context="fork")
    (planned,) = list(loader)
    got = builder(planned)
    for field in want["plan"].__dataclass_fields__:
        a, b = getattr(want["plan"], field), getattr(got["plan"], field)
        assert torch.equal(a, b) if torch.is_tensor(a) else a == b, field
    assert torch.equal(want["image_tokens"], got["image_tokens"])


def test_stage2_augments_its_training_split_only(stage1_run, tmp_path):
    cfg = stage1_run[0].with_overrides({"augment.enabled": True, "train.output_dir": str(tmp_path)})
    trainer = s2.Stage2Trainer(cfg, log=lambda *a: None)
    _, _, train_set, val_set, _ = trainer.build()
    assert trainer.augmentation is not None and train_set.samples.augmentation is trainer.augmentation
    assert val_set.samples.augmentation is None
