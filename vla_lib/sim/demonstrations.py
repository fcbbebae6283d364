"""Synthetic sessions of either scenario; the sensor task's demonstrations recorded on the simulated rig.

`write_dataset(cfg)` is the one entry point (CLI, pipeline, tests, benchmarks): `cfg.scenario: scripted` writes the
fixed-timing insertion (vla_lib/data/synthetic.py), `sensor_task` runs the reactive demonstrator of
vla_lib/data/scenarios.py on `SimRig` episode by episode and writes the rig's streams in the recorder formats. It
lives here, above both, because recording needs the rig and the data layer must not import the simulation.
"""
from __future__ import annotations

import json
import time as _time
from pathlib import Path

import numpy as np

from vla_lib.data.scenarios import GROUP_SENSOR, GROUP_VISION_ONLY, Episode, ReactiveDemonstrator, sample_episode
from vla_lib.data.cameras import ZED_SERIALS
from vla_lib.data.synthetic import stand_in_joints, write_scripted_dataset
from vla_lib.sim.rig import SimRig, run_controller


def write_dataset(cfg) -> list[Path]:
    """Write the synthetic sessions of `cfg` (a SyntheticConfig) under `cfg.out_dir`, for its `scenario`."""
    if getattr(cfg, "scenario", "scripted") == "sensor_task":
        return write_sensor_task_dataset(cfg)
    return write_scripted_dataset(cfg)


def record_episode(ep: Episode, synth_cfg, horizon: int = 8, dt: float = 0.1) -> SimRig:
    """Run the reactive demonstrator on a simulated rig for one episode (its gain drawn from `demo_gain_range`, its
    commands with `demo_noise_mm_s` of noise); returns the rig (all streams recorded)."""
    task = synth_cfg.task
    rng = np.random.default_rng([23, ep.seed])
    demo = ReactiveDemonstrator(task, horizon, dt, gain=float(rng.uniform(*task.demo_gain_range)),
                                noise_mm_s=task.demo_noise_mm_s, rng=rng)
    rig = SimRig(ep, synth_cfg, views=None)
    run_controller(demo, rig, task.episode_s, dt)
    rig.finish()
    return rig


def _write_common(session: Path, rig: SimRig, ep: Episode, folders: dict, name_fn) -> None:
    session.mkdir(parents=True, exist_ok=True)
    for (view, side), rel in folders.items():
        folder = session / rel
        folder.mkdir(parents=True, exist_ok=True)
        for k, t_cap in enumerate(rig.cameras.capture_times[(view, side)]):
            im = rig.cameras.render(view, side, k, rig.tip_at(t_cap))
            im.save(folder / name_fn(view, side, t_cap + ep.camera_clock_offset), quality=70)
    (session / "sensor_task_truth.json").write_text(ep.to_json())
    rng = np.random.default_rng([11, ep.seed])  # what the receiver measured: the offsets plus a little error
    (session / "clock_offsets.json").write_text(json.dumps({
        "camera_s": -ep.camera_clock_offset + float(rng.normal(0, 2e-4)),
        "sensor_s": -ep.sensor_clock_offset + float(rng.normal(0, 2e-4))}, indent=1))


def write_sensor_task_dataset(cfg) -> list[Path]:
    """`cfg.num_sensor_sessions` recv_all sessions under `<out_dir>/Sensor_task_phantom/` and
    `cfg.num_nosensor_sessions` vision-only Captures sessions (same task, no sensor file) under
    `<out_dir>/Sensor_task_vision_only/`. Episode i uses seed `cfg.seed * 100000 + i`: the closed-loop evaluation
    draws its episodes from another range (closed_loop.seed), so they are never training episodes."""
    import pandas as pd

    root = Path(cfg.out_dir)
    base = 1764000000.0 + 1000 * cfg.seed
    made = []
    for i in range(cfg.num_sensor_sessions + cfg.num_nosensor_sessions):
        ep = sample_episode(cfg.task, cfg.seed * 100000 + i)
        rig = record_episode(ep, cfg)
        t0 = base + 60 * i
        t, pose = rig.robot_log()
        t = np.round(t + t0, 3)
        stamp = _time.strftime("%Y%m%d_%H%M%S", _time.gmtime(t0))
        rng = np.random.default_rng([13, ep.seed])
        if i < cfg.num_sensor_sessions:
            session = root / GROUP_SENSOR / f"recv_all_{stamp}"
            folders = {(v, s): f"View{v}/{s}" for v in range(1, 5) for s in ("left", "right")} | {(5, "oak"): "View5"}
            _write_common(session, rig, ep, folders, lambda v, s, ts: f"oak_CAM_A_{ts + t0:.3f}.jpg" if v == 5
                          else f"zed_{ZED_SERIALS[v]}_{s}_{ts + t0:.3f}.jpg")
            send = t + 0.0002
            df = pd.DataFrame({"recv_timestamp": send + 0.0015 + rng.uniform(0, 0.001, len(t)),
                               "origin_timestamp": t, "send_timestamp": send, "force_placeholder": 0.0})
            for j, col in enumerate(stand_in_joints(pose).T, 1):
                df[f"joint_{j}"] = col
            for j, name in enumerate("xyzabr"):
                df[f"pose_{name}"] = pose[:, j]
            df.to_csv(session / f"robot_state_{stamp}.csv", index=False, float_format="%.6f")
            st, forces, alines = rig.sensor_log()
            ts = st + t0 + ep.sensor_clock_offset
            np.savez(session / f"sensor_data_{stamp}_{int(ts[0])}.npz", timestamps=ts,
                     send_timestamps=ts + rng.uniform(1e-4, 5e-4, len(ts)), forces=forces, alines=alines)
        else:
            session = root / GROUP_VISION_ONLY / f"Captures{i - cfg.num_sensor_sessions + 1}"
            folders = {(v, s): f"view{v}/{s}" for v in range(1, 5) for s in ("left", "right")} | {(5, "oak"): "view5_oak"}
            _write_common(session, rig, ep, folders, lambda v, s, ts: f"oak_{ts + t0:.3f}.jpg" if v == 5
                          else f"zed_{ZED_SERIALS[v]}_{s}_{ts + t0:.3f}.jpg")
            df = pd.DataFrame({"epoch_s": t})
            for j, col in enumerate(stand_in_joints(pose).T, 1):
                df[f"joint_angle_{j}"] = col
            for j, name in enumerate("xyzabr"):
                df[f"EE_{name}"] = pose[:, j]
            df.to_csv(session / f"robot_rt_{int(t[0])}.csv", index=False, float_format="%.6f")
        made.append(session)
    return made
