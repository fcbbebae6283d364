"""Runs the members not done yet through papermill, resumably; `run_member` is one member's train and evaluation."""
from __future__ import annotations

import json
import time
from pathlib import Path

from vla_lib.config import RunConfig, settings_changed
from vla_lib.errors import ConfigError
from vla_lib.jsonio import write_json
from vla_lib.notebook import execute, repo_root
from vla_lib.sweep.grid import base_values, frame_cache_path, member_dir, write_params

MEMBER_NOTEBOOK = "notebooks/sweep_member.ipynb"
DONE = "sweep_done.json"
# what a done member's results do not depend on: where files go, how fast, what is logged; and the weightless
# predictors, which `grid._weightless_once` gives to one member of a group by grid order
LOGISTICS = ("run_name", "output_root", "cache.dir", "cache.batch_size", "cache.num_workers", "cache.shard_size",
             "cache.allow_inline_encoding", "backbone.device", "backbone.tiny_model_dir", "backbone.fast_",
             "backbone.compile_cache_dir", "train.num_workers", "train.log_every_steps", "train.save_every_steps",
             "train.output_dir", "train.wandb_", "live.", "sweep.", "closed_loop.predictors",
             "closed_loop.plot_episodes", "closed_loop.torch_threads")


def run_sweep(source: RunConfig | str | Path, log=print) -> list[dict]:
    """Run every member not done yet through papermill (notebooks/sweep_member.ipynb); returns one status row each."""
    root = repo_root()
    cfg = RunConfig.from_dict(base_values(source, root))
    rows, ran = [], []
    members = write_params(source, root)
    for k, (member, path) in enumerate(members, 1):
        out = root / member_dir(cfg, member)
        if (out / DONE).exists():
            _refuse_stale(out, root / path, cfg)
            log(f"[sweep] member {k}/{len(members)} {member}: done already, skipped")
            rows.append({"member": member, "status": "skipped (done)", "seconds": 0.0})
            continue
        out.mkdir(parents=True, exist_ok=True)
        left = len(members) - k + 1
        eta = f", about {sum(ran) / len(ran) * left / 60:.1f} min left" if ran else ""
        log(f"[sweep] member {k}/{len(members)} {member} ...{eta}")
        start = time.time()
        execute(root / MEMBER_NOTEBOOK, out / "sweep_member.ipynb", path, cwd=root,
                prefix=f"[sweep {k}/{len(members)}] ")  # its epochs and closed loop stream as they run
        ran.append(time.time() - start)
        log(f"[sweep] member {k}/{len(members)} {member} done in {ran[-1]:.0f} s")
        rows.append({"member": member, "status": "ran", "seconds": ran[-1]})
    return rows


def _refuse_stale(out: Path, params: Path, sweep_cfg: RunConfig) -> None:
    """A done member is skipped only if it was done with its settings now: after an edit of the params (the model,
    the closed loop's levels, the data) its results would be stale, and the sweep stops saying what changed and what
    to do. A marker without the settings (written before they were stored) is judged by the member's params.yaml."""
    stored = json.loads((out / DONE).read_text()).get("run_config")
    if stored is None and (out / "params.yaml").exists():
        stored = RunConfig.from_yaml(out / "params.yaml").to_dict()
    now = RunConfig.from_yaml(params).to_dict()
    changed = ["its settings are unknown"] if stored is None else [
        c for c in settings_changed(stored, now) + settings_changed(stored, now, free_only=True)
        if not c.startswith(LOGISTICS)]
    if changed:
        raise ConfigError(f"sweep member {out} was done with other settings ({'; '.join(changed)}): its results would "
                          f"be stale. Give the sweep its own name (sweep.name, now {sweep_cfg.sweep.name!r}), or remove "
                          f"{out} to run the member again")


def mark_done(cfg: RunConfig, done: dict) -> None:
    """The marker that a member is done (atomic), with the settings it was done with (`_refuse_stale` reads them)."""
    write_json(Path(cfg.run_dir) / DONE, {**done, "run_config": cfg.to_dict()})


def run_member(cfg: RunConfig, log=print) -> dict:
    """One member: train (resumes if a previous attempt was killed), offline and closed-loop evaluation, done marker."""
    from vla_lib import training
    from vla_lib.evaluation.closed_loop import run_closed_loop, save_results
    from vla_lib.evaluation.run import run_offline

    if cfg.sweep.torch_threads:
        import torch

        torch.set_num_threads(cfg.sweep.torch_threads)
    start = time.time()
    summary = training.train(cfg, log=log)
    trained = time.time()
    result = run_offline(cfg)
    offline = result.metrics
    log("offline MSE on sensor samples per phase (policy / sensor removed): " + ", ".join(
        f"{p} {v['mse_with_sensor']:.4f} / {v['mse_without_sensor']:.4f}"
        for p, v in offline["sensor_ablation"]["per_phase"].items()))
    closed = run_closed_loop(cfg, log=log, feature_cache=frame_cache_path(cfg))
    done = {"train_s": trained - start, "eval_s": time.time() - trained, "best_val": summary["best_val"],
            "offline_policy_mse": offline["predictors"]["policy"]["mse"]}
    save_results(closed, Path(cfg.run_dir) / "closed_loop_results.json")
    mark_done(cfg, done)
    return {"closed_loop": closed, **done}
