"""A synthetic recorder: sessions in the real recorder formats, with physically consistent streams.

Each session is a scripted needle insertion like the rig's demonstrations: a noisy home pose, a min-jerk move to
an approach point above one of several targets, a pause, a slow insertion through the surface, a short hold. The
robot pose is known in closed form (`true_pose`), so tests can check alignment against exact values.

Streams, each stamped by its own machine's clock (three clocks with small offsets, like the real rig):
- robot at 100 Hz (stamps rounded to 1 ms), Euler angle r crossing ±180° during the approach;
- cameras at ~2 Hz, 4 ZED stereo views + 1 OAK view with inter-view skew; the target pad and the needle are drawn
  from each view's projection, so the images tell where the target is and where the needle is;
- the OCT/force sensor at ~650 Hz with jitter and dropped packets: force ≈ -3 rising on contact, and an A-line
  whose surface-reflection peak depth follows the tip-to-surface distance.
The receiver's clock-offset estimates go to `clock_offsets.json`, the truth to `synthetic_truth.json` (tests only).
The scene drawing (`view_projection`, `project`, `draw_pad`, `draw_needle`), the targets and the stand-in joint
columns are shared with the simulated rig (vla_lib/sim/), which records the sensor-task scenario; write both
scenarios through `vla_lib.sim.demonstrations.write_dataset` (it reads `synthetic.scenario`).
"""
from __future__ import annotations

import json
import time as _time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from vla_lib.data.cameras import ZED_SERIALS
from vla_lib.data.timeline import wrap_deg
from vla_lib.dims import ALINE_POINTS

TARGETS_XY = [(250.0, -40.0), (250.0, 40.0), (300.0, 0.0), (200.0, 0.0)]  # mm, on the pad surface
SURFACE_Z = 100.0
PHASES = [("home", 0.10), ("approach", 0.45), ("pause", 0.10), ("insert", 0.30), ("hold", 0.05)]


@dataclass
class TrajectorySpec:
    """Everything needed to evaluate the session's exact pose at any robot-clock time."""

    t0: float
    duration: float
    home: list[float]  # x, y, z, a, b, r (angles unwrapped)
    approach: list[float]
    insert: list[float]
    target_index: int
    camera_clock_offset: float  # camera clock = robot clock + this
    sensor_clock_offset: float


def _minjerk(tau: np.ndarray) -> np.ndarray:
    tau = np.clip(tau, 0.0, 1.0)
    return tau**3 * (10 - 15 * tau + 6 * tau**2)


def phase_bounds(spec: TrajectorySpec) -> list[tuple[str, float, float]]:
    out, start = [], spec.t0
    for name, frac in PHASES:
        out.append((name, start, start + frac * spec.duration))
        start += frac * spec.duration
    return out


def true_pose_unwrapped(spec: TrajectorySpec, t: np.ndarray) -> np.ndarray:
    """(N, 6) pose at robot-clock times t, angles continuous (not wrapped)."""
    t = np.atleast_1d(np.asarray(t, np.float64))
    (_, _, h1), (_, a0, a1), (_, _, p1), (_, i0, i1), _ = phase_bounds(spec)
    home, appr, ins = (np.array(v) for v in (spec.home, spec.approach, spec.insert))
    s1 = _minjerk((t - a0) / (a1 - a0))[:, None]
    s2 = _minjerk((t - i0) / (i1 - i0))[:, None]
    return home + s1 * (appr - home) + s2 * (ins - appr)


def true_pose(spec: TrajectorySpec, t: np.ndarray) -> np.ndarray:
    p = true_pose_unwrapped(spec, t)
    p[:, 3:] = wrap_deg(p[:, 3:])
    return p


def phase_at(spec: TrajectorySpec, t: float) -> str:
    for name, a, b in phase_bounds(spec):
        if t < b:
            return name
    return PHASES[-1][0]


def load_truth(session: Path) -> TrajectorySpec:
    return TrajectorySpec(**json.loads((Path(session) / "synthetic_truth.json").read_text()))


def phase_labels(index) -> np.ndarray | None:
    """Each sample's phase (home, approach, pause, insert, hold) where every session is a synthetic one (its truth
    file knows the phases); None for recorded data, which carries no phase labels."""
    labels = np.empty(len(index), object)
    sids = index.table["session_id"].to_numpy()
    t = index.table["t"].to_numpy(np.float64)
    for sid, session in index.sessions.items():
        if not (Path(session.path) / "synthetic_truth.json").exists():
            return None
        spec = load_truth(session.path)
        rows = np.flatnonzero(sids == sid)
        labels[rows] = [phase_at(spec, x) for x in t[rows]]
    return labels


# ---------------------------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------------------------
def view_projection(view: int, side: str) -> np.ndarray:
    """2x3 matrix mapping (x, y, z) mm around the workspace centre to normalised image offsets."""
    angle = np.deg2rad(25 + 70 * (view - 1))
    elev = 0.45 + 0.08 * view
    m = np.array([[np.cos(angle), np.sin(angle), 0.0],
                  [np.sin(angle) * elev, -np.cos(angle) * elev, -(1 - elev)]]) / 260.0
    if side == "right":  # a stereo pair: the same view shifted a little
        m = m * 1.02
    return m


def project(m: np.ndarray, xyz: np.ndarray, w: int, h: int) -> tuple[float, float]:
    centre = np.array([250.0, 0.0, SURFACE_Z])
    uv = m @ (np.asarray(xyz) - centre)
    return w * (0.5 + uv[0]), h * (0.55 + uv[1] * w / h)


def draw_pad(view: int, side: str, target_index: int, surface_z: float, w: int, h: int) -> Image.Image:
    """The scene without the needle: the pad at height `surface_z`, its four targets, the used one ringed (shared with
    the simulated rig, whose pad height varies per episode)."""
    im = Image.new("RGB", (w, h), (60 + 20 * view, 70, 80 + 10 * view))
    d = ImageDraw.Draw(im)
    m = view_projection(view, side)
    r = max(2, w // 90)
    corners = [(170, -90), (330, -90), (330, 90), (170, 90)]
    d.polygon([project(m, [x, y, surface_z], w, h) for x, y in corners], fill=(215, 215, 205))
    colours = [(250, 250, 250), (230, 200, 40), (40, 90, 220), (40, 170, 60)]
    for k, (x, y) in enumerate(TARGETS_XY):
        u, v = project(m, [x, y, surface_z], w, h)
        rr = r * (2 if k == target_index else 1)
        d.ellipse([u - rr, v - rr, u + rr, v + rr], fill=colours[k], outline=(200, 30, 30) if k == target_index else None,
                  width=max(1, r // 2))
    return im


def draw_needle(bg: Image.Image, view: int, side: str, tip: np.ndarray, w: int, h: int) -> Image.Image:
    im = bg.copy()
    d = ImageDraw.Draw(im)
    m = view_projection(view, side)
    shaft_end = tip + np.array([-20.0, 0.0, 70.0])
    d.line([project(m, shaft_end, w, h), project(m, tip, w, h)], fill=(20, 20, 20), width=max(2, w // 200))
    u, v = project(m, tip, w, h)
    r = max(2, w // 160)
    d.ellipse([u - r, v - r, u + r, v + r], fill=(255, 40, 40))
    return im


# ---------------------------------------------------------------------------------------------------------------
# Writing sessions
# ---------------------------------------------------------------------------------------------------------------
def _make_spec(rng: np.random.Generator, t0: float, duration: float, target_index: int) -> TrajectorySpec:
    tx, ty = TARGETS_XY[target_index]
    home = [220 + rng.uniform(-5, 5), rng.uniform(-5, 5), 190 + rng.uniform(-5, 5), 90 + rng.uniform(-3, 3),
            rng.uniform(-3, 3), 176.0 + rng.uniform(-1, 1)]
    approach = [tx, ty, SURFACE_Z + 30 + rng.uniform(-2, 2), 90.0, 0.0, 184.0 + rng.uniform(-1, 1)]  # r crosses 180
    insert = [tx, ty, SURFACE_Z - 4 - rng.uniform(0, 2), 90.0, 0.0, approach[5]]
    return TrajectorySpec(t0, duration, home, approach, insert, target_index,
                          float(rng.uniform(-0.02, 0.02)), float(rng.uniform(-0.015, 0.015)))


def _robot_times(spec: TrajectorySpec, hz: float) -> np.ndarray:
    n = int(spec.duration * hz)
    return np.round(spec.t0 + np.arange(n) / hz, 3)  # the recorder's clock thread rounds to 1 ms


def _write_frames(root: Path, folders: dict[tuple[int, str], str], spec: TrajectorySpec, cfg, rng, name_fn) -> None:
    w, h = cfg.image_width, cfg.image_height
    triggers = np.arange(spec.t0 + 0.05, spec.t0 + spec.duration, 1.0 / cfg.camera_hz)
    for (view, side), rel in folders.items():
        folder = root / rel
        folder.mkdir(parents=True, exist_ok=True)
        bg = draw_pad(view, side, spec.target_index, SURFACE_Z, w, h)
        skew = rng.uniform(0.0, 0.06)  # each view fires a little after the trigger
        for trig in triggers:
            t_robot = trig + skew + rng.uniform(0, 0.01)
            tip = true_pose(spec, np.array([t_robot]))[0, :3]
            im = draw_needle(bg, view, side, tip, w, h)
            stamp = t_robot + spec.camera_clock_offset  # the sender stamps with its own clock
            im.save(folder / name_fn(view, side, stamp), quality=70)


def _sensor_stream(spec: TrajectorySpec, cfg, rng) -> dict[str, np.ndarray]:
    n = int(spec.duration * cfg.sensor_hz)
    dt = 1.0 / cfg.sensor_hz + rng.normal(0, 0.08e-3, n)  # clock jitter
    t_robot = spec.t0 + np.cumsum(np.clip(dt, 0.2e-3, None))
    keep = rng.random(n) > 0.02  # dropped packets
    for _ in range(3):  # a few bursts of 10-25 ms lost in the network
        start = rng.integers(0, n - 20)
        keep[start:start + rng.integers(7, 17)] = False
    t_robot = t_robot[keep & (t_robot < spec.t0 + spec.duration)]
    tip_z = true_pose(spec, t_robot)[:, 2]
    distance = tip_z - SURFACE_Z  # > 0 above the surface, < 0 inside
    force = -3.0 + 0.35 * np.clip(-distance, 0, None) + rng.normal(0, 0.01, len(t_robot))
    # A-line: surface reflection peak at a depth index that follows the distance (0..6 mm visible).
    depth = np.arange(ALINE_POINTS, dtype=np.float32)
    peak = 60.0 + 150.0 * np.clip(distance, -0.3, 6.0)
    alines = (np.exp(-0.5 * ((depth[None, :] - peak[:, None]) / 6.0) ** 2) * 800.0
              + 40.0 * np.exp(-depth[None, :] / 300.0)
              + rng.normal(0, 5.0, (len(t_robot), ALINE_POINTS))).astype(np.float32)
    t_sensor = t_robot + spec.sensor_clock_offset
    return {"timestamps": t_sensor, "send_timestamps": t_sensor + rng.uniform(1e-4, 5e-4, len(t_sensor)),
            "forces": force.astype(np.float32), "alines": alines}


def stand_in_joints(pose: np.ndarray) -> np.ndarray:
    # Not a real Meca500 inverse kinematics: smooth stand-ins so the column is plausible. Nothing trains on it.
    x, y, z = pose[:, 0], pose[:, 1], pose[:, 2]
    return np.stack([np.degrees(np.arctan2(y, x)), 0.1 * (z - 150), 0.1 * (x - 250), pose[:, 3] - 90, pose[:, 4],
                     pose[:, 5]], 1)


def _write_truth(root: Path, spec: TrajectorySpec) -> None:
    (root / "synthetic_truth.json").write_text(json.dumps(asdict(spec), indent=1))
    # What the receiver would have measured (value to add to a stream's stamps to reach the robot clock).
    rng = np.random.default_rng(int(spec.t0))
    (root / "clock_offsets.json").write_text(json.dumps({
        "camera_s": -spec.camera_clock_offset + float(rng.normal(0, 2e-4)),
        "sensor_s": -spec.sensor_clock_offset + float(rng.normal(0, 2e-4))}, indent=1))


def write_recv_all_session(root: Path, spec: TrajectorySpec, cfg, rng) -> Path:
    stamp = _time.strftime("%Y%m%d_%H%M%S", _time.gmtime(spec.t0))
    session = root / f"recv_all_{stamp}"
    session.mkdir(parents=True, exist_ok=True)
    folders = {(v, s): f"View{v}/{s}" for v in range(1, 5) for s in ("left", "right")} | {(5, "oak"): "View5"}
    _write_frames(session, folders, spec, cfg, rng,
                  lambda v, s, ts: f"oak_CAM_A_{ts:.3f}.jpg" if v == 5 else f"zed_{ZED_SERIALS[v]}_{s}_{ts:.3f}.jpg")
    t = _robot_times(spec, cfg.robot_hz)
    pose = true_pose(spec, t)
    import pandas as pd

    send = t + 0.0002
    df = pd.DataFrame({"recv_timestamp": send + 0.0015 + rng.uniform(0, 0.001, len(t)), "origin_timestamp": t,
                       "send_timestamp": send, "force_placeholder": 0.0})
    for i, col in enumerate(stand_in_joints(pose).T, 1):
        df[f"joint_{i}"] = col
    for i, name in enumerate("xyzabr"):
        df[f"pose_{name}"] = pose[:, i]
    df.to_csv(session / f"robot_state_{stamp}.csv", index=False, float_format="%.6f")
    sensor = _sensor_stream(spec, cfg, rng)
    np.savez(session / f"sensor_data_{stamp}_{int(sensor['timestamps'][0])}.npz", **sensor)
    _write_truth(session, spec)
    return session


def write_captures_session(root: Path, name: str, spec: TrajectorySpec, cfg, rng, with_oak: bool,
                           time_col: str) -> Path:
    session = root / name
    session.mkdir(parents=True, exist_ok=True)
    folders = {(v, s): f"view{v}/{s}" for v in range(1, 5) for s in ("left", "right")}
    if with_oak:
        folders[(5, "oak")] = "view5_oak"
    _write_frames(session, folders, spec, cfg, rng,
                  lambda v, s, ts: f"oak_{ts:.3f}.jpg" if v == 5 else f"zed_{ZED_SERIALS[v]}_{s}_{ts:.3f}.jpg")
    t = _robot_times(spec, cfg.robot_hz)
    pose = true_pose(spec, t)
    import pandas as pd

    df = pd.DataFrame({time_col: t})
    for i, col in enumerate(stand_in_joints(pose).T, 1):
        df[f"joint_angle_{i}"] = col
    for i, name in enumerate("xyzabr"):
        df[f"EE_{name}"] = pose[:, i]
    df.to_csv(session / f"robot_rt_{int(t[0])}.csv", index=False, float_format="%.6f")
    _write_truth(session, spec)
    return session


def write_new_dataset_episode(root: Path, spec: TrajectorySpec, cfg, rng, window: int = 650,
                              every_s: float = 0.2) -> Path:
    """A Family C episode (the New_dataset layout, see `recorder_formats`): images/View1..5/<ts:.6f>.jpg (left + OAK),
    robot_states.csv, sensor_data.npz of trailing `window`-sample windows saved every `every_s` (once `window`
    samples exist), and metadata.json. The raw sensor stream is kept beside it as `synthetic_sensor_truth.npz`
    (tests only)."""
    stamp = _time.strftime("%Y%m%d_%H%M%S", _time.gmtime(spec.t0))
    episode = root / f"episode_{stamp}"
    episode.mkdir(parents=True, exist_ok=True)
    folders = {(v, "left"): f"images/View{v}" for v in range(1, 5)} | {(5, "oak"): "images/View5"}
    _write_frames(episode, folders, spec, cfg, rng, lambda v, s, ts: f"{ts:.6f}.jpg")
    t = _robot_times(spec, cfg.robot_hz)
    pose = true_pose(spec, t)
    import pandas as pd

    send = t + 0.0002
    df = pd.DataFrame({"recv_timestamp": send + 0.0015, "origin_timestamp": t, "send_timestamp": send, "force": 0.0})
    for i, col in enumerate(stand_in_joints(pose).T, 1):
        df[f"joint_{i}"] = col
    for i, name in enumerate("xyzabr"):
        df[f"pose_{name}"] = pose[:, i]
    df.to_csv(episode / "robot_states.csv", index=False, float_format="%.6f")
    sensor = _sensor_stream(spec, cfg, rng)
    rows = np.concatenate([sensor["forces"][:, None], sensor["alines"]], 1)
    ends, last = [], -np.inf
    for j in range(window - 1, len(rows)):
        if sensor["timestamps"][j] - last >= every_s:
            ends.append(j)
            last = sensor["timestamps"][j]
    data = np.stack([rows[j - window + 1:j + 1] for j in ends]).astype(np.float32)
    np.savez(episode / "sensor_data.npz", timestamps=sensor["timestamps"][ends], data=data)
    np.savez(episode / "synthetic_sensor_truth.npz", **sensor)
    (episode / "metadata.json").write_text(json.dumps({
        "episode_name": episode.name, "start_time": spec.t0, "end_time": spec.t0 + spec.duration,
        "camera_views": [f"View{i}" for i in range(1, 6)], "sensor_hz": cfg.sensor_hz, "robot_hz": cfg.robot_hz,
        "sensor_window_size": window, "action_horizon": 8, "action_dim": 7, "camera_frames_count": 0,
        "sensor_windows_count": len(ends), "robot_states_count": len(t)}, indent=1))
    (episode / "synthetic_truth.json").write_text(json.dumps(asdict(spec), indent=1))
    return episode


def write_scripted_dataset(cfg) -> list[Path]:
    """The scripted scenario: `cfg.num_sensor_sessions` recv_all sessions (two priority groups) and
    `cfg.num_nosensor_sessions` legacy sessions (OCT_insertion/Captures*, part1/ZED_Captures_*th) and
    `cfg.num_episode_sessions` New_dataset episodes (New_dataset/episode_*) under `cfg.out_dir`.
    Deterministic by seed. `vla_lib.sim.demonstrations.write_dataset` picks the scenario from `cfg.scenario`."""
    if getattr(cfg, "scenario", "scripted") != "scripted":  # fail loudly rather than write the wrong scenario
        raise ValueError(f"synthetic.scenario is {cfg.scenario!r}: use vla_lib.sim.demonstrations.write_dataset")
    root = Path(cfg.out_dir)
    rng = np.random.default_rng(cfg.seed)
    base = 1761580000.0 + 1000 * cfg.seed  # a fixed date (late Oct 2025) so names are reproducible
    made = []
    for i in range(cfg.num_sensor_sessions):
        group = ["White_silicone_white_circle", "Needle_insertion_eye_trocar"][i % 2]
        spec = _make_spec(rng, base + 120 * i, cfg.duration_s, int(rng.integers(len(TARGETS_XY))))
        made.append(write_recv_all_session(root / group, spec, cfg, rng))
    for i in range(cfg.num_nosensor_sessions):
        spec = _make_spec(rng, base + 120 * (cfg.num_sensor_sessions + i), cfg.duration_s,
                          int(rng.integers(len(TARGETS_XY))))
        if i % 2 == 0:
            made.append(write_captures_session(root / "OCT_insertion", f"Captures{i // 2 + 1}", spec, cfg, rng,
                                               with_oak=True, time_col="epoch_s"))
        else:
            made.append(write_captures_session(root / "part1", f"ZED_Captures_{i // 2 + 1}th", spec, cfg, rng,
                                               with_oak=False, time_col="timestamp"))
    for i in range(cfg.num_episode_sessions):
        n = cfg.num_sensor_sessions + cfg.num_nosensor_sessions + i
        spec = _make_spec(rng, base + 120 * n, cfg.duration_s, int(rng.integers(len(TARGETS_XY))))
        made.append(write_new_dataset_episode(root / "New_dataset", spec, cfg, rng))
    return made
