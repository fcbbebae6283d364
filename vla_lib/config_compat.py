"""How far a config from elsewhere may differ: keys that moved, and settings a resume may change."""
from __future__ import annotations

_LIMITS = ("max_step_mm", "max_step_deg", "max_speed_mm_s", "max_speed_deg_s", "workspace_min", "workspace_max")
# Keys that moved or went: where they are now (a params file that still uses one gets told, not just refused).
MOVED = {
    **{f"live.{k}": f"runtime.limits.{k}" for k in _LIMITS},
    "live.force_limit": "runtime.limits.force_limit_n", "live.force_baseline": "runtime.limits.force_baseline_n",
    "live.max_stream_age_s": "runtime.limits.max_robot_age_s and max_sensor_age_s",
    **{f"live.{k}": f"runtime.{k}" for k in ("execution", "blend_decay", "execution_latency_s")},
    "live.action_rate_hz": None, "eval.action_rate_hz": None,  # gone: every loop ticks once per data.action_dt_s
}


def moved_keys(where: str, unknown: list[str]) -> list[str]:
    """What became of those `unknown` keys of section `where` ("" or "live.") that are in `MOVED`, one line each."""
    return [f"{where}{k} moved to {MOVED[where + k]}" if MOVED[where + k] else
            f"{where}{k} is gone: every loop ticks once per data.action_dt_s (the duration of a chunk step; ticking "
            "at another rate would scale every speed)" for k in unknown if where + k in MOVED]


# ---------------------------------------------------------------------------------------------------------------
# Settings a resumed run must share with the run it continues. The others change nothing the weights depend on
# (logging, workers, paths, step limits, the eval section), so a resume honours a change of them.
RESUME_FREE = ("run_name", "output_root", "synthetic.", "eval.", "data.root", "cache.dir", "cache.batch_size",
               "cache.num_workers", "cache.shard_size", "cache.allow_inline_encoding", "backbone.device",
               "backbone.tiny_model_dir", "backbone.fast_", "backbone.compile_cache_dir", "train.num_workers", "train.log_every_steps",
               "train.save_every_steps", "train.max_steps", "train.output_dir", "train.wandb_", "live.", "runtime.", "closed_loop.",
               "sweep.")


def _flat(d: dict, prefix: str = "") -> dict:
    """Dotted keys to values (`data.clock_offsets` stays one value: its keys are session names, not settings)."""
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) and k != "clock_offsets" else {prefix + k: v})
    return out


def changed_settings(stored: dict, current: dict, defaults: dict, free_only: bool = False) -> list[str]:
    """The settings that differ between two run config dicts: those a resume cannot honour, or (`free_only`) the
    RESUME_FREE ones it can. `defaults` is a default run config's dict (vla_lib.config.settings_changed passes it)."""
    a, b = _flat(stored), _flat(current)
    # A setting added after the stored run was saved, at its default, is the behaviour that run had: not a change.
    defaults = _flat(defaults)
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k) and k.startswith(RESUME_FREE) == free_only
            and not (k not in a and k in defaults and b.get(k) == defaults[k])]
