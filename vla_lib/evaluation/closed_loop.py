"""Closed-loop evaluation on the simulated rig: does the needle end at the right depth without excessive force?

Held-out episodes are drawn from `closed_loop.seed` (the recorder draws training episodes from `synthetic.seed`, a
disjoint range). Each predictor drives a fresh rig for the episode (same surface, stiffness, sensor noise and camera
timing for every predictor), and every predictor runs through the runtime that would drive the robot
(`vla_lib.runtime`: the control loop, the executor, the limits, the fault responses and the sensor guard):
- `policy`: the checkpoint, VL features refreshed as camera frames arrive (modelled latency), sensor window and pose
  history from the rig at each tick;
- `policy_no_sensor`: the same, with the sensor removed (no window: the heads' learned null embedding);
- `scripted`: the demonstrator's moves with the surface assumed at its nominal height (ignores the sensor);
- `demonstrator`: the reactive demonstrator itself (the reference the policy imitates), on request.
Per episode: final tip depth below the surface, depth error, peak contact force, overshoot past the target depth,
time to finish (from the start until the depth stays within tolerance), success (|depth error| <= tolerance and the
contact force never above the limit), the runtime's interventions per kind, the inference delay and the velocity
jump at chunk switches. `closed_loop.guard_off_too` runs each predictor again with the guard off (its peak force beside).
Aggregated to `metrics.json` under `closed_loop/<predictor>/`.
"""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from vla_lib.jsonio import write_json
from vla_lib.config import PREDICTORS  # one list: the config validates closed_loop.predictors against it

from vla_lib.data.scenarios import (PREROLL_S, ReactiveDemonstrator, ScriptedBaseline, contact_force, oct_distance,
                                    sample_episode)
from vla_lib.evaluation.mmode import episode_sensor, load_sensor_logs, mmode_path, save_sensor_logs, shown
from vla_lib.runtime.loop import Runtime, run_loop
from vla_lib.sim.rig import SimRig



class NoSensor:
    """A RobotIO seen without its sensor: `sensor_window()` is None (the policy takes its null embedding) and no
    sensor age (nothing to be stale). The guard still watches the force: the arm's safety does not depend on it."""

    def __init__(self, io):
        self.io = io

    def __getattr__(self, name):
        return getattr(self.io, name)

    def sensor_window(self):
        return None

    def stream_ages(self):
        return {k: v for k, v in self.io.stream_ages().items() if k != "sensor"}


class ControllerPolicy:
    """A controller that reads the rig (demonstrator, scripted baseline) as a policy of the runtime: no features,
    its chunk from the rig at each tick. So every predictor runs through the same loop, executor and limits."""

    history_steps = 0

    def __init__(self, controller, io):
        self.controller, self.io = controller, io

    def encode(self, instructions, views):
        return None, None

    def act(self, features, mask, window, history, contact=None):
        return self.controller(self.io)[None]


class FrameFeatureCache:
    """VL features keyed by the policy's feature identity (backbone, adapter) + the rendered images' bytes +
    instruction: an identical frame set (same episode, same
    tip pixels) is encoded once across predictors, episodes and sweep runs (`path`: kept on disk between runs)."""

    def __init__(self, policy, path: str | Path | None = None):
        self.policy, self.path = policy, Path(path) if path else None
        self.store: dict = {}
        self.hits = self.misses = 0
        if self.path is not None and self.path.exists():
            import torch

            self.store = torch.load(self.path, weights_only=True)

    @property
    def history_steps(self) -> int:
        return self.policy.history_steps

    def act(self, *args, **kw):
        return self.policy.act(*args, **kw)

    def encode(self, instructions, views):
        h = hashlib.sha1(getattr(self.policy, "features_identity", "").encode())  # another backbone or adapter
        for instruction, ims in zip(instructions, views):
            h.update(instruction.encode())
            for im in ims:
                h.update(b"-" if im is None else np.asarray(im).tobytes())
        key = h.hexdigest()
        if key not in self.store:
            self.misses += 1
            self.store[key] = self.policy.encode(instructions, views)
        else:
            self.hits += 1
        return self.store[key]

    def save(self) -> None:
        if self.path is not None:
            import torch

            self.path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(self.store, self.path)


@dataclass
class EpisodeResult:
    predictor: str
    seed: int
    surface_offset_mm: float
    stiffness: float
    final_depth_mm: float
    depth_error_mm: float
    peak_force_n: float
    overshoot_mm: float
    time_to_finish_s: float | None
    success: bool
    interventions: dict = field(default_factory=dict)  # the runtime's counts per kind
    stopped: str | None = None  # what latched a stop, if anything did
    inference_delay_steps: float = 0.0  # median over the ticks
    switch_jump_mm_s: float | None = None  # mean velocity jump at chunk switches (mm/s)
    peak_force_n_guard_off: float | None = None  # closed_loop.guard_off_too: the same episode without the guard
    trace: dict = field(default_factory=dict, repr=False)  # t, depth_mm, force_n at 10 ms (for plots)
    report: dict = field(default_factory=dict, repr=False)  # the control loop's summary (runtime/loop.py)
    sensor: dict | None = field(default=None, repr=False)  # keep_sensor: the M-mode data (evaluation/mmode.py)


def save_results(result: "ClosedLoopResult", path: str | Path) -> Path:
    """A closed-loop result as JSON (metrics, every episode, its traces as lists; NaN as null); the episodes that
    kept their sensor log go beside it (`mmode_path`), as arrays."""
    save_sensor_logs(result.results, mmode_path(path))
    return write_json(path, {"metrics": result.metrics, "results": {
        name: [_fields(e) for e in eps] for name, eps in result.results.items()}}, indent=None)


def _fields(e: EpisodeResult) -> dict:
    out = asdict(replace(e, sensor=None))  # asdict copies what it walks: not the A-lines
    del out["sensor"]
    return out


def load_results(path: str | Path) -> "ClosedLoopResult":
    payload = json.loads(Path(path).read_text())
    results = {name: [EpisodeResult(**{**e, "trace": {k: _array(v) for k, v in e["trace"].items()}})
                      for e in eps] for name, eps in payload["results"].items()}
    load_sensor_logs(results, mmode_path(path))
    return ClosedLoopResult(payload["metrics"], results)


def _array(values: list) -> np.ndarray:
    a = np.asarray(values)
    return np.asarray(values, dtype=float) if a.dtype == object else a  # null (NaN in the trace) back to NaN


def episode_metrics(rig: SimRig, predictor: str, task, start: float = PREROLL_S) -> EpisodeResult:
    t, depth = rig.depth_trace()
    force = contact_force(rig.ep, rig.ep.surface_z - depth)
    final = float(depth[-1])
    err = abs(final - task.target_depth_mm)
    peak = float(force.max())
    outside = np.nonzero(np.abs(depth - task.target_depth_mm) > task.tolerance_mm)[0]
    if len(outside) == 0:
        finish = 0.0
    elif outside[-1] == len(depth) - 1:
        finish = None  # never settled within the tolerance
    else:
        finish = float(t[outside[-1] + 1] - start)
    keep = slice(None, None, 5)
    return EpisodeResult(predictor, rig.ep.seed, rig.ep.surface_z - task.surface_z_nominal, rig.ep.stiffness, final,
                         err, peak, max(0.0, float(depth.max()) - task.target_depth_mm), finish,
                         bool(err <= task.tolerance_mm and peak <= task.force_limit_n),
                         trace={"t": t[keep] - start, "depth_mm": depth[keep], "force_n": force[keep]})


def run_episode(predictor: str, seed: int, cfg, policy=None, instruction: str = "", guard: bool | None = None,
                faults=None, keep_sensor: bool = False) -> EpisodeResult:
    """One held-out episode (episode seed `seed`) driven by `predictor` on a fresh rig, through the runtime
    (`cfg.runtime`; `guard` overrides runtime.guard; `faults`: a `sim.fault_injection.Faults` to rehearse;
    `keep_sensor`: keep the episode's M-mode data in `.sensor`, for the episodes that get drawn)."""
    synth, task = cfg.synthetic, cfg.synthetic.task
    if predictor not in PREDICTORS:
        raise ValueError(f"unknown predictor {predictor!r} (known: {PREDICTORS})")
    rig = SimRig(sample_episode(task, seed), synth, views=list(cfg.data.views), data_cfg=cfg.data)
    rt_cfg = cfg.runtime if guard is None else replace(cfg.runtime, guard=guard)
    runtime = Runtime(rt_cfg, cfg.data.action_dt_s, rig, oct_distance=lambda a: oct_distance(a, task))
    io = rig if predictor != "policy_no_sensor" else NoSensor(rig)
    if predictor in ("scripted", "demonstrator"):
        ctrl = (ScriptedBaseline if predictor == "scripted" else ReactiveDemonstrator)(task, cfg.data.horizon,
                                                                                        cfg.data.action_dt_s)
        policy = ControllerPolicy(ctrl, io)
    elif policy is None:
        raise ValueError(f"predictor {predictor!r} needs a policy")
    if faults is not None:
        from vla_lib.sim.fault_injection import FaultyIO, FaultyPolicy

        io, policy = FaultyIO(io, faults), FaultyPolicy(policy, faults, rig.clock, cfg.data.action_dt_s)
        if isinstance(policy.policy, ControllerPolicy):
            policy.policy.io = io
    rig.clock.sleep_until(PREROLL_S)
    report = run_loop(policy, io, runtime, instruction, task.episode_s, clock=rig.clock,
                      vl_latency_s=task.vl_latency_s if not isinstance(policy, ControllerPolicy) else 0.0,
                      inject_delay_s=cfg.runtime.inject_delay_s)
    rig.clock.sleep_until(PREROLL_S + task.episode_s)
    result = episode_metrics(rig, predictor, task)
    s = report.summary
    result.interventions, result.stopped = s["interventions"], s["stopped"]
    result.inference_delay_steps, result.switch_jump_mm_s = s["inference_delay_steps_p50"], s["switch_jump_mm_s"]
    result.report = s
    if keep_sensor:
        result.sensor = episode_sensor(rig, PREROLL_S)
    return result


def _mean(values):
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _max(values):
    values = [v for v in values if v is not None]
    return float(np.max(values)) if values else None


def summarise(results: list[EpisodeResult]) -> dict:
    err = np.array([r.depth_error_mm for r in results])
    force = np.array([r.peak_force_n for r in results])
    finish = [r.time_to_finish_s for r in results if r.time_to_finish_s is not None]
    return {
        "episodes": len(results),
        "success_rate": float(np.mean([r.success for r in results])),
        "depth_error_mm": float(err.mean()), "depth_error_mm_std": float(err.std()),
        "depth_error_mm_median": float(np.median(err)),
        "peak_force_n": float(force.mean()), "peak_force_n_max": float(force.max()),
        "overshoot_mm": float(np.mean([r.overshoot_mm for r in results])),
        "time_to_finish_s": float(np.mean(finish)) if finish else None,
        "finished_fraction": len(finish) / len(results),
        "interventions": dict(sum((Counter(r.interventions) for r in results), Counter())),
        "stopped_episodes": int(sum(r.stopped is not None for r in results)),
        "inference_delay_steps": float(np.median([r.inference_delay_steps for r in results])),
        "switch_jump_mm_s": _mean([r.switch_jump_mm_s for r in results]),
        "peak_force_n_guard_off": _mean([r.peak_force_n_guard_off for r in results]),
        "peak_force_n_max_guard_off": _max([r.peak_force_n_guard_off for r in results]),
        "per_episode": [{k: v for k, v in vars(r).items() if k not in ("trace", "report", "predictor", "sensor")}
                        for r in results],
    }


@dataclass
class ClosedLoopResult:
    metrics: dict  # predictor -> summary (JSON-ready)
    results: dict[str, list[EpisodeResult]]


def evaluate_closed_loop(cfg, policy=None, predictors=None, episodes: int | None = None, instruction: str | None = None,
                         log=print) -> ClosedLoopResult:
    """Every predictor on the same `episodes` held-out episodes (seeds closed_loop.seed + i)."""
    cl = cfg.closed_loop
    predictors = list(predictors or cl.predictors)
    n = episodes or cl.episodes
    if instruction is None:
        instruction = cfg.data.groups[0].instruction
    results, metrics = {}, {}
    import torch

    threads = torch.get_num_threads()
    if cl.torch_threads:
        torch.set_num_threads(cl.torch_threads)
    try:
        _run_all(cfg, policy, predictors, n, instruction, results, metrics, log)
    finally:
        torch.set_num_threads(threads)
    return ClosedLoopResult(metrics, results)


def _run_all(cfg, policy, predictors, n, instruction, results, metrics, log) -> None:
    cl = cfg.closed_loop
    for name in predictors:
        if name.startswith("policy") and policy is None:
            raise ValueError(f"predictor {name!r} needs a policy")
        # the M-mode view draws the first episode of the predictors it shows: only those keep their sensor log
        keep = name in shown(predictors)
        results[name] = [run_episode(name, cl.seed + i, cfg, policy, instruction, keep_sensor=keep and i == 0)
                         for i in range(n)]
        if cl.guard_off_too and cfg.runtime.guard:  # the same episodes without the guard: what it prevented
            for r, i in zip(results[name], range(n)):
                r.peak_force_n_guard_off = run_episode(name, cl.seed + i, cfg, policy, instruction,
                                                       guard=False).peak_force_n
        metrics[name] = summarise(results[name])
        m = metrics[name]
        stops = f", {m['stopped_episodes']} stopped" if m["stopped_episodes"] else ""
        off = f" (guard off {m['peak_force_n_guard_off']:.2f})" if m["peak_force_n_guard_off"] is not None else ""
        log(f"closed loop {name:>17}: success {m['success_rate']:.2f}, depth error {m['depth_error_mm']:.2f} ± "
            f"{m['depth_error_mm_std']:.2f} mm, peak force {m['peak_force_n']:.2f} N (max {m['peak_force_n_max']:.2f})"
            f"{off}, {n} episodes{stops}")


def run_closed_loop(cfg, policy=None, log=print, feature_cache: str | Path | None = None) -> ClosedLoopResult:
    """Load the run's checkpoint (unless given), evaluate, merge into outputs/<run>/metrics.json["closed_loop"]; with
    `closed_loop.robustness.enabled`, then the robustness matrix (evaluation/robustness.py) into ["robustness"]."""
    from vla_lib.policy.loading import load_policy

    if policy is None and any(p.startswith("policy") for p in cfg.closed_loop.predictors):
        # the backbone's device (auto: the GPU where there is one): heads trained on GPU features (bf16, images
        # prepared on the device) are refused behind the CPU's fp32 backbone, as they should be
        policy = load_policy(cfg)
    cached = FrameFeatureCache(policy, feature_cache) if policy is not None else None
    result = evaluate_closed_loop(cfg, cached, log=log)
    if cached is not None:
        cached.save()
        log(f"VL features: {cached.misses} frame sets encoded, {cached.hits} served from the frame cache")
    write_json(Path(cfg.run_dir) / "metrics.json", merge=True, values={"closed_loop": result.metrics})
    if cfg.closed_loop.robustness.enabled:  # after the save: the perturbed frames stay in memory, off the shared file
        from vla_lib.evaluation.robustness import run_matrix

        run_matrix(cfg, lambda c: evaluate_closed_loop(c, cached, log=log), result.metrics, log=log)
    return result


# ---------------------------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------------------------
COLOURS = {"policy": "C0", "policy_no_sensor": "C1", "scripted": "C3", "demonstrator": "k"}


def plot_traces(result: ClosedLoopResult, task, n_episodes: int = 3):
    """Depth and contact force over time, per predictor, for the first few episodes."""
    import matplotlib.pyplot as plt

    names = list(result.results)
    n = min(n_episodes, len(result.results[names[0]]))
    fig, axes = plt.subplots(2, n, figsize=(5 * n, 6), sharex=True, squeeze=False)
    for j in range(n):
        for name in names:
            r = result.results[name][j]
            axes[0, j].plot(r.trace["t"], r.trace["depth_mm"], color=COLOURS.get(name), label=name)
            axes[1, j].plot(r.trace["t"], r.trace["force_n"], color=COLOURS.get(name), label=name)
        r = result.results[names[0]][j]
        axes[0, j].axhspan(task.target_depth_mm - task.tolerance_mm, task.target_depth_mm + task.tolerance_mm,
                           color="g", alpha=0.15, label="target ± tolerance")
        axes[0, j].axhline(0, color="grey", lw=0.8)
        axes[0, j].set(title=f"episode {r.seed}: surface {r.surface_offset_mm:+.1f} mm, k {r.stiffness:.2f} N/mm",
                       ylabel="tip depth below surface (mm)", ylim=(-6, 6))
        axes[1, j].axhline(task.force_limit_n, color="r", ls="--", label="force limit")
        axes[1, j].set(xlabel="s", ylabel="contact force (N)")
    axes[0, 0].legend(fontsize=7)
    axes[1, 0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_success_by_surface(result: ClosedLoopResult, task):
    """Final depth error against the surface height offset, per predictor (filled = success)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    for name, rs in result.results.items():
        x = np.array([r.surface_offset_mm for r in rs])
        y = np.array([r.final_depth_mm - task.target_depth_mm for r in rs])
        ok = np.array([r.success for r in rs])
        c = COLOURS.get(name)
        ax.scatter(x[ok], y[ok], color=c, label=f"{name} (success {ok.mean():.0%})")
        ax.scatter(x[~ok], y[~ok], facecolors="none", edgecolors=c)
    ax.axhspan(-task.tolerance_mm, task.tolerance_mm, color="g", alpha=0.15)
    ax.set(xlabel="surface height offset from nominal (mm)", ylabel="final depth - target (mm)",
           title="closed loop: final depth error by surface height (filled = success)")
    ax.legend(fontsize=8)
    return fig
