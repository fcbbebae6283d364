"""On the scripted-scenario parameters (the previous demo: synthetic sessions, tiny VLM, CPU minutes) the trained
policy beats the trivial baselines on held-out sessions, evaluated without teacher forcing; on the demo's (the sensor
task) it beats the last delta from the chunk's third step on. The full checks (30 epochs, every
baseline, the whole horizon; the demo's 4 epochs) are in the quality gate; the unit suite keeps a small version that
fails the same way when training or evaluation breaks. (The demo is judged in closed loop too:
tests/evaluation/test_closed_loop.py, notebook 05.)"""
from pathlib import Path

import pytest
import yaml

from vla_lib.config import RunConfig
from vla_lib.evaluation.run import run_offline
from vla_lib.pipeline import ensure_synthetic
from vla_lib.training import train
from vla_lib.vlm.cache_build import build_cache

REPO = Path(__file__).resolve().parents[2]


def _trained_metrics(tmp_path, synthetic=None, epochs=None, params_file="params/scripted.yaml") -> dict:
    params = yaml.safe_load((REPO / params_file).read_text())
    params.update(output_root=str(tmp_path))
    params["synthetic"].update(synthetic or {}, out_dir=str(tmp_path / "sessions"))
    params["data"]["root"] = str(tmp_path / "sessions")
    params["cache"]["dir"] = str(tmp_path / "cache")
    params["train"].update(output_dir=str(tmp_path / "train"), wandb_mode="disabled", epochs=epochs or params["train"]["epochs"])
    cfg = RunConfig.from_dict(params)
    ensure_synthetic(cfg)
    build_cache(cfg, log=lambda *a: None)
    train(cfg, log=lambda *a: None)
    return run_offline(cfg).metrics


@pytest.mark.quality
def test_trained_policy_beats_the_best_trivial_baseline(tmp_path):
    m = _trained_metrics(tmp_path)
    policy = m["predictors"]["policy"]["mse"]
    best = min(m["predictors"][b]["mse"] for b in ("zero", "train_mean", "last_delta"))
    assert m["n_samples"] > 100 and len(m["sessions"]) >= 3
    assert policy < 0.5 * best, f"policy MSE {policy:.4f} vs best baseline {m['best_baseline']} {best:.4f}"
    # over the whole horizon, not only where extrapolating the last delta is easy
    assert m["predictors"]["policy"]["mse_per_step"][-1] < 0.5 * m["predictors"]["last_delta"]["mse_per_step"][-1]
    assert (tmp_path / "scripted" / "metrics.json").exists()


@pytest.mark.quality
def test_the_demo_policy_beats_last_delta_from_the_third_step(tmp_path):
    """The demo's own parameters (its sessions, 4 epochs; 2 min). Its heads have no proprioception token, so the
    first chunk step, mostly the motion commanded a tick earlier, stays last-delta's (docs/results.md "Proprioception
    without copying": with the token they win it too but fail closed-loop cells these hold), and the second is within
    a few % of it (0.00150 against 0.00152 in the demo's run): both are left out, so that rounding cannot flip the
    gate. From the third step on the policy is 2-4x better, and about 2.2x over the chunk."""
    m = _trained_metrics(tmp_path, params_file="params/demo.yaml")["predictors"]
    policy, last = m["policy"]["mse_per_step"], m["last_delta"]["mse_per_step"]
    worse = [f"step {i + 1}: {p:.5f} > {d:.5f}" for i, (p, d) in enumerate(zip(policy, last)) if p > d and i >= 2]
    assert not worse, f"the policy loses to last-delta on {worse}"
    assert m["policy"]["mse"] * 1.8 <= m["last_delta"]["mse"], (m["policy"]["mse"], m["last_delta"]["mse"])


@pytest.mark.slow
def test_a_briefly_trained_policy_beats_the_constant_baselines(tmp_path):
    m = _trained_metrics(tmp_path, dict(num_sensor_sessions=4, num_nosensor_sessions=2, duration_s=6.0,
                                        image_width=320, image_height=180), epochs=6)
    policy = m["predictors"]["policy"]["mse"]
    best = min(m["predictors"][b]["mse"] for b in ("zero", "train_mean"))
    assert policy < 0.7 * best, f"policy MSE {policy:.4f} vs zero/train-mean {best:.4f}"
