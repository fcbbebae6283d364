"""A second (fake, tiny) backbone through `vla_lib.vlm.interface`: the cache, training and inference run on it, and
none of them imports anything Qwen-specific on the way."""
import json
import os
import subprocess
import sys
from pathlib import Path

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
