"""A second (fake, tiny) backbone through `vla_lib.vlm.interface`: the cache, training, inference and Stage 2 run on
it, and none of them imports anything Qwen-specific on the way; a backbone without `Stage2Backbone` is refused by
Stage 2 in one line."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

FLOW = """
import json, sys
import numpy as np, torch
from vla_lib.config import RunConfig
from vla_lib.data.samples import SampleDataset, build_index
from vla_lib.data.timeline import SensorWindow
from vla_lib.policy.vla_policy import VLAPolicy
from vla_lib.models.inputs import inputs_from_observation
from vla_lib.training import train
from vla_lib.vlm.cache_build import build_cache, open_store
cfg = RunConfig.from_yaml("params/ci.yaml").with_overrides(json.loads(sys.argv[1]))
built = build_cache(cfg, log=lambda *a: None)
summary = train(cfg, log=lambda *a: None)
policy = VLAPolicy.from_checkpoint(f"{cfg.train.output_dir}/checkpoints/qwen_vla_sensor_final.pt", device="cpu")
index = build_index(cfg.data)
i = int(np.flatnonzero(index.table.has_sensor.to_numpy())[3])
sample = SampleDataset(index, cfg.data)[i]
paths = index.view_paths(i)
window = SensorWindow(sample["sensor"], sample["sensor_mask"])
chunk = policy.predict(index.table.instruction[i], paths, window, index.history[i])
feats, mask = policy.backbone.encode(policy.backbone.preparer()([([p for p in paths if p], index.table.instruction[i],
                                                                 [p is not None for p in paths])]))
x = inputs_from_observation(feats, mask, window.batched(), index.history[i][None], window=65, channels=1026,
                            device="cpu")
expected = policy.heads.predict(x)[0].numpy()
print(json.dumps({"encoded": built["encoded"], "unique": built["unique_inputs"], "store": open_store(cfg).parts,
                  "epochs": summary["epochs_done"], "vl_dim": policy.heads.config.vl_dim,
                  "max_diff": float(np.abs(chunk - expected).max()), "backbone": type(policy.backbone).__name__,
                  "qwen_imported": any(m.startswith("vla_lib.vlm.qwen") for m in sys.modules),
                  "transformers_imported": "transformers" in sys.modules}))
"""


def test_a_second_backbone_runs_cache_training_and_inference(synth_root, tmp_path):
    overrides = {"backbone.kind": "tests.vlm.toy_backbone", "data.root": str(synth_root),
                 "cache.dir": str(tmp_path / "cache"), "train.output_dir": str(tmp_path / "train"),
                 "train.epochs": 1, "train.wandb_mode": "disabled", "output_root": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", FLOW, json.dumps(overrides)], cwd=REPO, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["encoded"] == out["unique"] > 0 and out["store"]["kind"] == "tests.vlm.toy_backbone"
    assert out["store"]["backbone"].startswith("toy-") and out["epochs"] == 1 and out["vl_dim"] == 12
    assert out["backbone"] == "ToyBackbone" and out["max_diff"] < 1e-5
    assert not out["qwen_imported"], "the cache, training and inference reached into the Qwen package"


STAGE2_FLOW = """
import json, sys
from pathlib import Path
from vla_lib.config import RunConfig
from vla_lib.data.samples import build_index
from vla_lib.policy import VLAPolicy, checkpoint_stage
from vla_lib.training import train
from vla_lib.vlm.cache_build import build_cache
cfg = RunConfig.from_yaml("params/ci.yaml").with_overrides(json.loads(sys.argv[1]))
build_cache(cfg, log=lambda *a: None)
train(cfg, log=lambda *a: None)
stage1 = f"{cfg.train.output_dir}/checkpoints/qwen_vla_sensor_best.pt"
s2 = cfg.with_overrides({"train.training_stage": "stage2", "train.finetune_vl": "lora", "train.stage1_checkpoint":
                         stage1, "train.output_dir": sys.argv[2], "train.vl_lr": 1e-2})
summary = train(s2, log=lambda *a: None)
ckpt = f"{s2.train.output_dir}/checkpoints/qwen_vla_sensor_final.pt"
index = build_index(cfg.data)
rows = range(0, len(index), max(1, len(index) // 6))
args = [index.table.instruction[i] for i in rows], [index.view_paths(i) for i in rows]
adapted, base = VLAPolicy.from_checkpoint(ckpt, device="cpu"), VLAPolicy.from_checkpoint(stage1, device="cpu")
print(json.dumps({"stage": checkpoint_stage(ckpt), "epochs": summary["epochs_done"],
                  "adapter_moved": float((adapted.encode(*args)[0] - base.encode(*args)[0]).abs().max()),
                  "stores": sorted(json.loads(m.read_text())["kind"] for m in Path(cfg.cache.dir).glob("*/meta.json")),
                  "qwen_imported": sorted(m for m in sys.modules if m.startswith("vla_lib.vlm.qwen"))}))
"""


def test_a_second_backbone_runs_stage2_through_the_interface(synth_root, tmp_path):
    """The toy implements `Stage2Backbone`: LoRA on its layers trains through train(), the Stage-2 checkpoint loads
    onto it at inference and its adapter changes the features, and nothing of the Qwen package is imported."""
    overrides = {"backbone.kind": "tests.vlm.toy_backbone", "data.root": str(synth_root),
                 "cache.dir": str(tmp_path / "cache"), "train.output_dir": str(tmp_path / "train"),
                 "train.epochs": 1, "train.wandb_mode": "disabled", "output_root": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", STAGE2_FLOW, json.dumps(overrides), str(tmp_path / "s2")], cwd=REPO,
                          capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["stage"] == "stage2" and out["epochs"] == 1 and out["adapter_moved"] > 1e-4
    assert out["stores"] == ["stage2-vision-tokens/1", "tests.vlm.toy_backbone"]  # + the frame-level vision cache
    assert out["qwen_imported"] == [], "Stage 2 reached into the Qwen package"


def test_stage2_refuses_a_backbone_without_the_stage2_interface_in_one_line(synth_root, tmp_path, monkeypatch):
    """A kind lacking a `Stage2Backbone` member (here the toy without its pixel path) is refused as Stage 2 starts,
    in one line naming the kind and what it lacks, not with an AttributeError in the middle of a step."""
    from tests.vlm import toy_backbone
    from vla_lib.config import ConfigError, RunConfig
    from vla_lib.stage2.train_stage2 import setup

    cfg = RunConfig.from_yaml(str(REPO / "params/ci.yaml")).with_overrides(
        {"backbone.kind": "tests.vlm.toy_backbone", "data.root": str(synth_root), "cache.dir": str(tmp_path),
         "train.training_stage": "stage2", "train.finetune_vl": "lora"})
    monkeypatch.delattr(toy_backbone.ToyBackbone, "plan_from_pixels")
    with pytest.raises(ConfigError) as refused:
        setup(cfg, "cpu", say=lambda *a: None)
    message = str(refused.value)
    assert "\n" not in message and "'tests.vlm.toy_backbone'" in message and "lacks plan_from_pixels " in message
