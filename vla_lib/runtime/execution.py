"""The chunk execution modes (`runtime.execution`): which step of which usable chunk goes out at a tick.

`EXECUTION_MODES` is the one list of them: the config's choices, `ChunkExecutor`, the delay sweep and notebook 07
read it, so a new mode is one entry here. A chunk observed at `t_obs` covers [t_obs + k dt, t_obs + (k+1) dt) with its
step k; a step sent at `t_send` executes at `t_exec = t_send + execution_latency_s` (the arm's latency).
- `first`: step 0 of the newest usable chunk, whatever its age (the naive "act on the first action": with an
  inference delay it executes a step meant for the past);
- `blend`: a latency-aware temporal ensemble: every usable chunk covering t_exec contributes its step
  k = floor((t_exec - t_obs) / dt), weighted exp(-blend_decay x k), so fresher chunks weigh more;
- `rtc`: real-time chunking's execution (Black et al. 2025, "Real-Time Execution of Action Chunking Flow
  Policies"): while a chunk is being inferred (delay d steps) the previous chunk's steps run on (the committed
  prefix); once the new chunk is usable the executor switches to it at its step d, never re-executing the steps
  that went out meanwhile. Valid while d <= H - 1; a chunk whose horizon has run out is a hold (`horizon_exhausted`).
(The flow-matching inpainting half of RTC has nothing to act on here: the Action Expert is a regression head.)

Nothing here imports the rest of the package: the runtime's configuration validates `runtime.execution` against it.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

# A usable chunk as the executor holds it: (id, t_obs, t_ready, (H, 6) steps), oldest first.
Usable = tuple[int, float, float, np.ndarray]
# What a mode picks: (the 6 deltas, chunk id, step index, reasons: non-empty means hold).
Pick = tuple[np.ndarray, int, int, list[str]]


def step_index(t_exec: float, t_obs: float, dt: float) -> int:
    """The step of a chunk observed at `t_obs` that covers `t_exec`."""
    return int(math.floor((t_exec - t_obs) / dt + 1e-9))


def first(chunks: Sequence[Usable], t_exec: float, dt: float, blend_decay: float) -> Pick:
    cid, _, _, chunk = chunks[-1]
    return chunk[0].copy(), cid, 0, []


def rtc(chunks: Sequence[Usable], t_exec: float, dt: float, blend_decay: float) -> Pick:
    cid, t_obs, _, chunk = chunks[-1]
    k = step_index(t_exec, t_obs, dt)
    if k >= len(chunk):
        return np.zeros(6), cid, k, ["horizon_exhausted"]
    return chunk[max(k, 0)].copy(), cid, max(k, 0), []


def blend(chunks: Sequence[Usable], t_exec: float, dt: float, blend_decay: float) -> Pick:
    total, weight, newest, newest_k = np.zeros(6), 0.0, -1, -1
    for c_id, tc, _, c in chunks:
        k = step_index(t_exec, tc, dt)
        if 0 <= k < len(c):
            w = math.exp(-blend_decay * k)
            total += w * c[k]
            weight += w
            newest, newest_k = c_id, k
    if weight == 0.0:  # no chunk covers t_exec (delay beyond the horizon): hold
        return np.zeros(6), chunks[-1][0], -1, ["horizon_exhausted"]
    return total / weight, newest, newest_k, []


@dataclass(frozen=True)
class ExecutionMode:
    # (usable chunks, t_exec, dt, blend_decay) -> the step for this tick; called with at least one usable chunk
    pick: Callable[[Sequence[Usable], float, float, float], Pick]
    # True: a chunk's step for a time is the one covering it; False: its step 0 whatever the time (the step a
    # chunk switch is measured against, `Command.switch_jump_mm_s`)
    timed: bool


EXECUTION_MODES: dict[str, ExecutionMode] = {
    "first": ExecutionMode(first, timed=False),
    "blend": ExecutionMode(blend, timed=True),
    "rtc": ExecutionMode(rtc, timed=True),
}
