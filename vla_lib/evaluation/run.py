"""Evaluation entry points shared by the CLI (`--mode eval`) and notebook 04: everything from one RunConfig."""
from __future__ import annotations

import json
from pathlib import Path

from vla_lib.models.checkpoint import CHECKPOINT_NAMES


def checkpoint_path(cfg) -> Path:
    return Path(cfg.eval.checkpoint or Path(cfg.train.output_dir) / "checkpoints" / CHECKPOINT_NAMES["best"])


def held_out(cfg):
    """(held-out SampleIndex, its FeatureTable) with the same episode split as training."""
    from vla_lib.data.samples import build_index
    from vla_lib.data.split import split_sessions
    from vla_lib.vlm.cache_build import open_store
    from vla_lib.vlm.feature_store import FeatureTable

    index = build_index(cfg.data, check_images=False)
    _, val_ids = split_sessions(index, cfg.data)
    val = index.subset(val_ids)
    return val, FeatureTable(open_store(cfg), val.table["cache_key"])


def run_offline(cfg, device: str = "cpu"):
    """Offline metrics of the configured checkpoint on the held-out sessions -> outputs/<run>/metrics.json."""
    from vla_lib.evaluation.offline import evaluate_offline
    from vla_lib.models.checkpoint import load_checkpoint

    heads, _, stats = load_checkpoint(checkpoint_path(cfg))
    val, features = held_out(cfg)
    result = evaluate_offline(heads, val, cfg.data, features, stats, device=device)
    result.metrics["checkpoint"] = str(checkpoint_path(cfg))
    write_json(Path(cfg.run_dir) / "metrics.json", {"offline": result.metrics})
    return result


def write_json(path: Path, values: dict) -> Path:
    """Merge `values` into a JSON file (offline, realtime and latency results share metrics.json)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    current = json.loads(path.read_text()) if path.exists() else {}
    current.update(values)
    path.write_text(json.dumps(_finite(current), indent=1))
    return path


def _finite(x):
    """NaN/inf are not JSON: written as null."""
    import math

    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x
