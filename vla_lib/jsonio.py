"""Results as JSON (metrics, reports, closed-loop episodes): plain Python from numpy, NaN and inf as null (JSON has no
NaN), written atomically. Data, never pickle."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

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
    """Write `values` to `path` (`merge`: into what the file holds already, top-level keys replaced)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    current = json.loads(path.read_text()) if merge and path.exists() else {}
    current.update(values)
    atomic_write_text(path, json.dumps(json_safe(current), indent=indent))
    return path
