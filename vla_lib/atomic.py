"""Atomic file writes: the whole file under a temporary name in the same folder, then one rename. A reader (or a
process killed mid-write) never sees a half-written checkpoint, shard, index or settings file; several processes may
write the same file at once (each has its own temporary name; the last rename wins)."""
from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Callable


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """`write(tmp_path)` writes the content; the result is renamed onto `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))
