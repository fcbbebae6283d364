"""Stage 2 through the CLI: exact resume after SIGKILL; the checkpoint (heads + peft adapter) as a VLAPolicy that
gives the training model's outputs; a Stage-2 checkpoint never reads the Stage-1 feature store."""
import copy
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import run_cli


def _run(flags, out_dir, extra=(), wait=True):
    # each Stage-2 run its own run folder (the Stage-1 run's would be repointed: refused)
    extra = [*extra, "--set", f"output_root={out_dir}"]
    return run_cli(["--mode", "train", *flags], out_dir, extra, wait=wait, timeout=900)


def _final(run: Path) -> dict:
    from safetensors.torch import load_file

    heads = torch.load(run / "checkpoints/qwen_vla_sensor_final.pt", weights_only=True)["model_state_dict"]
    folders = list((run / "checkpoints").glob("qwen_vla_sensor_final.adapter-*"))
    assert len(folders) == 1  # the one the heads file names; earlier ones pruned
    lora = load_file(str(folders[0] / "adapter_model.safetensors"))
    return {**{f"heads.{k}": v for k, v in heads.items()}, **{f"lora.{k}": v for k, v in lora.items()}}


@pytest.mark.quality  # 40 s: the quality gate runs it; Stage 1's kill-and-resume test runs in the suite
def test_sigkill_then_resume_ends_with_the_same_weights(stage1_run, tmp_path):
    _, flags, _ = stage1_run
    extra = ["--epochs", "2", "--batch-size", "4", "--save-every-steps", "1", "--lr", "1e-3", "--vl-lr", "1e-2"]
    out = _run(flags, tmp_path / "straight", extra)
    assert "Stage 2 (LoRA + heads)" in out and "vision cache on" in out
    proc = _run(flags, tmp_path / "killed", extra, wait=False)
    metrics = tmp_path / "killed" / "metrics.jsonl"
    deadline = time.time() + 600
    while time.time() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 8:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed/checkpoints/qwen_vla_sensor_final.pt").exists(), "killed too late"
    assert "Resumed from" in _run(flags, tmp_path / "killed", extra)
    a, b = _final(tmp_path / "straight"), _final(tmp_path / "killed")
    assert a.keys() == b.keys() and any(k.startswith("lora.") for k in a)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)
    assert not torch.equal(a["lora." + next(k[5:] for k in a if "lora_B" in k)], torch.zeros(1))  # trained
    # only the adapter and the heads are saved: no base weight in the adapter file
    assert all("lora_" in k for k in a if k.startswith("lora."))


@pytest.fixture(scope="module")
def stage2_trained(stage1_run, tmp_path_factory):
    from vla_lib.training import train

    cfg, _, _ = stage1_run
    cfg = copy.deepcopy(cfg)
    cfg.train.output_dir = str(tmp_path_factory.mktemp("s2run"))
    cfg.train.epochs, cfg.train.max_steps = 1, 0
    train(cfg, log=lambda *a: None)
    return cfg, Path(cfg.train.output_dir) / "checkpoints/qwen_vla_sensor_final.pt"


def test_stage2_policy_gives_the_training_models_outputs(stage2_trained):
    from vla_lib.data.samples import SampleDataset, build_index
    from vla_lib.policy.vla_policy import VLAPolicy
    from vla_lib.models.inputs import inputs_from_batch
    from vla_lib.stage2 import train_stage2 as s2

    cfg, ckpt = stage2_trained
    policy = VLAPolicy.from_checkpoint(ckpt, device="cpu", tiny_model_dir=cfg.backbone.tiny_model_dir)
    # the training model at the end of the run: a fresh Stage-2 model with the run's last trainable state
    model, backbone, _, _, cache = s2.setup(copy.deepcopy(cfg), "cpu", say=lambda *a: None)
    state = torch.load(Path(cfg.train.output_dir) / "checkpoints/resume_state.pt", weights_only=True)["model"]
    model.load_state_dict(state)
    model.eval()
    index = build_index(cfg.data)
    frames_of, _ = s2.sample_frames(index)
    rows = index.table.groupby("group").head(2).index.tolist()
    data = s2.FrameSamples(SampleDataset(index, cfg.data), frames_of)
    batch = s2.collate_frames([data[i] for i in rows])
    with torch.no_grad():
        inputs = s2.InputBuilder(backbone, cfg, "cpu", cache)(batch)
        feats = model.features(inputs["plan"], inputs["image_tokens"])
        x = inputs_from_batch({**batch, "vl": feats, "vl_mask": inputs["plan"].token_mask}, "cpu")
        want = model.heads.predict(x).numpy()
    # the policy's features (the adapter merged into the named backbone, Stage 1's encoder path) are the training
    # model's (LoRA unmerged, cached vision tokens, our LM path)
    f_policy, m_policy = policy.encode(batch["instruction"], [index.view_paths(i) for i in rows])
    torch.testing.assert_close(f_policy, feats, rtol=1e-4, atol=1e-5)
    assert torch.equal(m_policy, inputs["plan"].token_mask)
    from vla_lib.data.timeline import SensorWindow

    sensor = SensorWindow(batch["sensor"].numpy(), batch["sensor_mask"].numpy())
    got = policy.predict_batch(batch["instruction"], [index.view_paths(i) for i in rows], sensor,
                               batch["history"].numpy())
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    # the adapter changed the features: the Stage-1 encoder would give other outputs
    stage1 = VLAPolicy.from_checkpoint(cfg.train.stage1_checkpoint, device="cpu",
                                       tiny_model_dir=cfg.backbone.tiny_model_dir)
    f1, _ = stage1.encode(batch["instruction"], [index.view_paths(i) for i in rows])
    assert (f_policy - f1).abs().max() > 1e-3


def test_stage2_checkpoint_refuses_the_stage1_feature_store(stage2_trained, tmp_path):
    import shutil

    from vla_lib.evaluation.run import held_out
    from vla_lib.policy.vla_policy import VLAPolicy
    from vla_lib.policy.checkpoint import CheckpointMismatchError, checkpoint_stage, feature_mismatch, load_checkpoint
    from vla_lib.vlm.cache_build import open_store

    cfg, ckpt = stage2_trained
    assert checkpoint_stage(ckpt) == "stage2" and checkpoint_stage(cfg.train.stage1_checkpoint) == "stage1"
    ecfg = copy.deepcopy(cfg)
    ecfg.eval.checkpoint, ecfg.eval.allow_backbone_mismatch = str(ckpt), True
    with pytest.raises(CheckpointMismatchError, match="Stage-2 checkpoint"):
        held_out(ecfg)  # even when a backbone mismatch is allowed: the store lacks the adapter
    parts = load_checkpoint(ckpt).features
    store = open_store(cfg, create=False)
    assert store.dir.exists() and parts["fingerprint"] != store.fingerprint
    assert any(d.startswith("adapter") for d in feature_mismatch(parts["parts"], store.parts))
    # an adapter folder that is not the one the heads were trained with is refused
    other = tmp_path / "qwen_vla_sensor_final.pt"
    shutil.copy(ckpt, other)
    folder = next(ckpt.parent.glob("qwen_vla_sensor_final.adapter-*"))
    shutil.copytree(folder, tmp_path / folder.name)
    from safetensors.torch import load_file, save_file

    f = tmp_path / folder.name / "adapter_model.safetensors"
    tensors = load_file(str(f))
    k = next(iter(tensors))
    tensors[k] = tensors[k] + 0.01
    save_file(tensors, str(f))
    for allow in (False, True):  # never overridable: --allow-backbone-mismatch is about the backbone
        with pytest.raises(CheckpointMismatchError, match="adapter"):
            VLAPolicy.from_checkpoint(other, device="cpu", tiny_model_dir=cfg.backbone.tiny_model_dir,
                                      allow_backbone_mismatch=allow)


def test_a_crash_between_adapter_and_heads_leaves_the_checkpoint_loadable(stage2_trained, tmp_path):
    """save_heads writes the new adapter folder first and the heads file last: killed in between, the old heads
    file still names its own adapter folder, which is still there."""
    import shutil

    from vla_lib.policy.vla_policy import VLAPolicy
    from vla_lib.stage2 import train_stage2 as s2
    from vla_lib.policy.adapter import save_adapter

    cfg, ckpt = stage2_trained
    ckpt_copy = tmp_path / ckpt.name
    shutil.copy(ckpt, ckpt_copy)
    for folder in ckpt.parent.glob(ckpt.stem + ".adapter-*"):
        shutil.copytree(folder, tmp_path / folder.name)
    before = VLAPolicy.from_checkpoint(ckpt_copy, device="cpu", tiny_model_dir=cfg.backbone.tiny_model_dir)
    model, *_ = s2.setup(copy.deepcopy(cfg), "cpu", say=lambda *a: None)
    with torch.no_grad():
        next(p for n, p in model.vl.named_parameters() if "lora_B" in n).add_(0.5)  # a newer adapter
    save_adapter(model.vl, ckpt_copy)  # ... and the process is killed before the heads file is written
    assert len(list(tmp_path.glob(ckpt.stem + ".adapter-*"))) == 2
    after = VLAPolicy.from_checkpoint(ckpt_copy, device="cpu", tiny_model_dir=cfg.backbone.tiny_model_dir)
    for a, b in zip(before.backbone.model.parameters(), after.backbone.model.parameters()):
        assert torch.equal(a, b)


def test_offline_evaluation_of_a_stage2_checkpoint_encodes_through_the_adapter(stage2_trained):
    from vla_lib.evaluation.run import run_offline

    cfg, ckpt = stage2_trained
    ecfg = copy.deepcopy(cfg)
    ecfg.eval.checkpoint = str(ckpt)
    result = run_offline(ecfg)  # no feature store: held-out features from the adapted backbone
    m = result.metrics
    assert m["checkpoint"] == str(ckpt) and np.isfinite(m["predictors"]["policy"]["mse"])
    assert m["sessions"] == sorted(torch.load(ckpt, weights_only=True)["split"]["val"])
