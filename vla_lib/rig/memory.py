"""Process memory over a live run: RSS and the C heap sampled in a thread, and the verdict the soak prints.

RSS alone cannot tell a leak from an allocator holding freed memory: glibc's `mallinfo2` splits the heap into bytes
in use and bytes free but kept (fragmented or above the trim threshold), summed over every arena.
"""
from __future__ import annotations

import ctypes
import threading
import time

import numpy as np


def rss_mb() -> float:
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(k, ctypes.c_size_t) for k in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]


def _libc():
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _Mallinfo2
        return libc
    except (OSError, AttributeError):  # not glibc (or glibc < 2.33)
        return None


_LIBC = _libc()


def heap_mb() -> tuple[float, float] | None:
    """(in use, free but kept) MB of the C heap over all arenas (glibc); None elsewhere."""
    if _LIBC is None:
        return None
    m = _LIBC.mallinfo2()
    return (m.uordblks + m.hblkhd) / 2**20, m.fordblks / 2**20


class MemoryTrace(threading.Thread):
    """Samples (seconds since start, RSS MB, heap in use MB, heap free MB) every `every_s` until `stop()`."""

    def __init__(self, every_s: float = 1.0):
        super().__init__(name="memory-trace", daemon=True)
        self.every_s = every_s
        self.samples: list[tuple[float, float, float | None, float | None]] = []
        self._halt = threading.Event()

    def run(self):
        t0 = time.time()
        while True:
            heap = heap_mb() or (None, None)
            self.samples.append((round(time.time() - t0, 1), round(rss_mb(), 1), *(
                None if v is None else round(v, 1) for v in heap)))
            if self._halt.wait(self.every_s):
                return

    def stop(self) -> list:
        self._halt.set()
        self.join(5.0)
        return self.samples


def memory_verdict(samples, warmup_s: float = 30.0) -> dict:
    """RSS and the heap (in use, free) at the end of the warm-up and at the end, and their least-squares slopes in
    MB/min over the second half of the run, never before the warm-up's end (the figure that says flat or not)."""
    a = np.array([[np.nan if v is None else v for v in s] for s in samples], float)
    t, end = a[:, 0], a[-1, 0]
    out = {"duration_s": float(end), "warmup_s": warmup_s}
    names = ("rss", "heap_in_use", "heap_free")
    after = t >= min(warmup_s, end)
    half = t >= max(warmup_s, end / 2)
    for i, name in enumerate(names, start=1):
        col = a[:, i]
        out[f"{name}_mb_warmup"] = float(col[after][0])
        out[f"{name}_mb_end"] = float(col[-1])
        ok = half & np.isfinite(col)
        out[f"{name}_mb_per_min_second_half"] = (float(np.polyfit(t[ok], col[ok], 1)[0] * 60)
                                                 if ok.sum() >= 3 and np.ptp(t[ok]) > 0 else None)
    return out
