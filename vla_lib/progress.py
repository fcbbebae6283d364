"""Progress as log lines (a line at every tenth of the work, with the rate and the time left): they read the same in
a terminal, a log file, and a notebook that papermill streams line by line, where a redrawn bar shows nothing until
it ends."""
from __future__ import annotations

import time
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")


def logged(items: Iterable[T], total: int, what: str, log: Callable[[str], None], steps: int = 10) -> Iterator[T]:
    """Yield `items`, logging "what k/total (p %), r/s, ~s left" after each tenth of `total` (items counted)."""
    start, done, next_at = time.time(), 0, max(1, total // steps)
    for item in items:
        yield item
        done += 1
        if done >= next_at or done == total:
            spent = time.time() - start
            left = spent / done * (total - done)
            log(f"{what} {done}/{total} ({100 * done / max(total, 1):.0f} %), {spent:.0f} s so far, "
                f"~{left:.0f} s left")
            next_at = done + max(1, total // steps)
