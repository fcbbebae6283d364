"""A short closed-loop run on the simulated rig: the loop, the sensor removal, the metrics and metrics.json keys.

The policy here is a stand-in with the policy's interface (encode / act on the windows the loop passes), reading
the sensor like the demonstrator: with the sensor it must succeed; with it removed (NoSensor: no window) it cannot
know where the surface is and must fail; the scripted baseline misses by the surface offset."""
import json

import numpy as np
import torch

from vla_lib.config import RunConfig
from vla_lib.data.scenarios import chunk_from_speed, descent_speed, read_sensor
from vla_lib.data.timeline import SensorWindow


class SensorReadingPolicy:
    history_steps = 4

    def __init__(self, task):
        self.task, self.encoded = task, 0

    def encode(self, instructions, views):
        assert len(views[0]) == 2 and all(im is not None for im in views[0])
        self.encoded += 1
        return torch.zeros(1, 3, 8), torch.ones(1, 3, dtype=torch.bool)

    def act(self, feats, mask, window, history, contact=None):
        distance, _ = read_sensor(None if window is None else SensorWindow(window.values[0], window.valid[0]), self.task)
        moving = history is not None and abs(history[0, -1, 2]) > 1e-4
        if distance is not None and distance <= -(self.task.target_depth_mm - 0.03):
            speed = 0.0
        elif window is None and moving and np.abs(history[0, :, 2]).mean() < 0.02:
            speed = 0.0  # without a sensor: a guess from its own slow-down, stops anywhere
        else:
            speed = descent_speed(distance, self.task)
        return chunk_from_speed(speed, 8, 0.1)[None]


def _cfg(tmp_path):
    cfg = RunConfig.from_dict({"output_root": str(tmp_path), "run_name": "cl",
                               "synthetic": {"scenario": "sensor_task", "image_width": 64, "image_height": 36},
                               "data": {"views": ["View1_left", "View2_left"]},
                               "closed_loop": {"episodes": 4, "seed": 500}})
    return cfg


def test_short_closed_loop_run(tmp_path):
    from vla_lib.evaluation.closed_loop import FrameFeatureCache, evaluate_closed_loop, summarise
    from vla_lib.evaluation.run import write_json

    cfg = _cfg(tmp_path)
    task = cfg.synthetic.task
    policy = SensorReadingPolicy(task)
    cached = FrameFeatureCache(policy, tmp_path / "frames.pt")
    result = evaluate_closed_loop(cfg, cached, predictors=["policy", "policy_no_sensor", "scripted"], log=lambda *a: None)
    m = result.metrics
    assert m["policy"]["success_rate"] == 1.0 and m["policy"]["depth_error_mm"] < 0.15
    assert m["policy"]["peak_force_n"] < task.force_limit_n and m["policy"]["overshoot_mm"] < 0.2
    assert m["policy"]["time_to_finish_s"] < task.episode_s
    assert m["policy_no_sensor"]["depth_error_mm"] > 2 * m["policy"]["depth_error_mm"]
    assert m["policy_no_sensor"]["success_rate"] < 1.0
    # the blind script misses by the surface offset: its error is |offset| episode by episode
    offsets = np.array([r.surface_offset_mm for r in result.results["scripted"]])
    errors = np.array([r.depth_error_mm for r in result.results["scripted"]])
    np.testing.assert_allclose(errors, np.abs(offsets), atol=0.15)
    # every predictor saw the same episodes; VL refreshed at camera rate, identical frame sets encoded once
    assert [r.seed for r in result.results["policy"]] == [r.seed for r in result.results["scripted"]] == [500, 501, 502, 503]
    assert 0 < cached.misses == policy.encoded and cached.hits > 0
    for name, summary in m.items():
        assert summary["episodes"] == 4 and len(summary["per_episode"]) == 4
    path = write_json(cfg.run_dir / "metrics.json", {"closed_loop": m})
    stored = json.loads(path.read_text())["closed_loop"]
    for name in ("policy", "policy_no_sensor", "scripted"):
        assert {"success_rate", "depth_error_mm", "peak_force_n", "episodes"} <= set(stored[name])
    # a rerun is deterministic (same episodes, same sensor noise, same camera timing)
    again = evaluate_closed_loop(cfg, cached, predictors=["policy"], episodes=2, log=lambda *a: None)
    assert [r.final_depth_mm for r in again.results["policy"]] == [r.final_depth_mm for r in result.results["policy"][:2]]


def test_force_limit_fails_an_episode(tmp_path):
    from vla_lib.evaluation.closed_loop import run_episode

    cfg = _cfg(tmp_path)
    cfg.synthetic.task.force_limit_n = 0.1  # the right depth with too much force is not a success
    r = run_episode("demonstrator", 500, cfg)
    assert r.depth_error_mm < 0.15 and r.peak_force_n > 0.1 and not r.success
