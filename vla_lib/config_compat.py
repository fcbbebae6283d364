"""How far a resumed run's config may differ from the run it continues: the settings a resume may change."""
from __future__ import annotations

from vla_lib.dotted import flatten

# ---------------------------------------------------------------------------------------------------------------
# Settings a resumed run must share with the run it continues. The others change nothing the weights depend on
# (logging, workers, paths, step limits, the eval section), so a resume honours a change of them.
RESUME_FREE = ("run_name", "output_root", "synthetic.", "eval.", "data.root", "cache.dir", "cache.batch_size",
               "cache.num_workers", "cache.shard_size", "cache.allow_inline_encoding", "backbone.device",
               "backbone.tiny_model_dir", "backbone.fast_", "backbone.compile_cache_dir", "train.num_workers", "train.log_every_steps",
               "train.save_every_steps", "train.max_steps", "train.output_dir", "train.wandb_", "live.", "runtime.", "closed_loop.",
               "sweep.")
# `data.clock_offsets` is one setting: its keys are session names.
_DATA_KEYS = ("clock_offsets",)


def changed_settings(stored: dict, current: dict, defaults: dict, free_only: bool = False) -> list[str]:
    """The settings that differ between two run config dicts: those a resume cannot honour, or (`free_only`) the
    RESUME_FREE ones it can. `defaults` is a default run config's dict (vla_lib.config.settings_changed passes it)."""
    a, b, defaults = (flatten(d, keep=_DATA_KEYS) for d in (stored, current, defaults))
    # A setting the stored config lacks, now at its default, is the behaviour that run had: not a change.
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k) and k.startswith(RESUME_FREE) == free_only
            and not (k not in a and k in defaults and b.get(k) == defaults[k])]
