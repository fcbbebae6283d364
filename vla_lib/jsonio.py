"""Results as JSON (metrics, reports, closed-loop episodes): plain Python from numpy, NaN and inf as null (JSON has no
NaN), written atomically. Data, never pickle."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from filelock import FileLock

from vla_lib.atomic import atomic_write_text


def json_safe(x):
    """`x` with numpy arrays and scalars as Python values, dict keys as strings, non-finite floats as None."""
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, np.ndarray):
        return json_safe(x.tolist())
    if isinstance(x, (np.bool_, np.integer)):
        return x.item()
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    return x


def write_json(path: str | Path, values: dict, merge: bool = False, indent: int | None = 1) -> Path:
    """Write `values` to `path` (`merge`: into what the file holds already, top-level keys replaced). A merge holds a
    lock file beside `path` from read to write: evaluation and the closed loop may merge into one metrics.json from two
    processes at once, and neither may lose the other's keys."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not merge:
        atomic_write_text(path, json.dumps(json_safe(values), indent=indent))
        return path
    with FileLock(str(path) + ".lock", timeout=120):
        current = json.loads(path.read_text()) if path.exists() else {}
        current.update(values)
        atomic_write_text(path, json.dumps(json_safe(current), indent=indent))
    return path
