"""A live run keeps nothing per tick in memory (each tick goes to a sink, the summary to flat columns), and the
soak's memory verdict (warm-up level, end level, slope over the second half) says what the samples say."""
import numpy as np
import pytest

from vla_lib.rig.memory import MemoryTrace, heap_mb, memory_verdict
from vla_lib.runtime.configuration_runtime import RuntimeConfig
from vla_lib.runtime.loop import Runtime, run_loop
from vla_lib.runtime.robot_io import RecordingActuator


class _Clock:
    def __init__(self):
        self.t = 0.0

    def now(self):
        return self.t

    def sleep_until(self, t):
        self.t = max(self.t, t)


class _IO:
    def __init__(self, clock=None):
        self.clock, self.actuator = clock, RecordingActuator()

    def begin(self):
        pass

    def now(self):
        return self.clock.now() if self.clock else 0.0

    def views(self):
        return [None], (0,), self.now()

    def sensor_window(self):
        return None

    def pose_history(self, steps):
        return np.zeros((steps, 6), np.float32)

    def robot_pose(self):
        return np.array([250.0, 0, 150, 0, 0, 0])

    def stream_ages(self):
        return {"robot": 0.0}

    def attach_guard(self, guard):
        pass


class _Policy:
    history_steps = 0

    def encode(self, instructions, views):
        return np.zeros((1, 1, 4), np.float32), np.ones((1, 1), bool)

    def act(self, features, mask, windows, history, contact=None):
        return np.zeros((1, 8, 7), np.float32)


@pytest.mark.parametrize("on_clock", [True, False])
def test_ticks_go_to_the_sink_and_none_are_kept(on_clock):
    def run(sink):
        clock = _Clock() if on_clock else None
        io = _IO(clock)
        return run_loop(_Policy(), io, Runtime(RuntimeConfig(), 0.05, io.actuator), "x", duration_s=1.0, clock=clock,
                        tick_sink=sink)

    sunk = []
    streamed, kept = run(sunk.append), run(None)
    assert streamed.ticks == [] and len(sunk) == streamed.summary["action_steps"] >= 15
    assert len(kept.ticks) == kept.summary["action_steps"]
    s = streamed.summary
    assert s["action_latency_ms_p99"] == pytest.approx(np.percentile([t["latency_ms"] for t in sunk], 99))
    assert s["deadline_misses"] == sum(t["missed"] for t in sunk) + sum(t.get("skipped_ticks", 0) for t in sunk)
    if on_clock:  # deterministic: the same figures whether the ticks were kept or streamed
        assert s["staleness_s_max"] == kept.summary["staleness_s_max"] and s["action_steps"] == 20


def test_memory_verdict_levels_and_second_half_slope():
    t = np.arange(0, 121, 1.0)
    rss = 800 + np.minimum(t, 30) * 2 + np.where(t > 60, (t - 60) / 60 * 3.0, 0)  # warm-up, flat, then 3 MB/min
    samples = [(x, r, 200.0, None) for x, r in zip(t, rss)]
    v = memory_verdict(samples, warmup_s=30)
    assert v["rss_mb_warmup"] == 860 and v["rss_mb_end"] == pytest.approx(863)
    assert v["rss_mb_per_min_second_half"] == pytest.approx(3.0, rel=1e-6)
    assert v["heap_in_use_mb_per_min_second_half"] == pytest.approx(0, abs=1e-9)
    assert v["heap_free_mb_per_min_second_half"] is None  # no glibc figures: no slope, no crash
    short = memory_verdict([s for s in samples if s[0] <= 40], warmup_s=30)  # 30-40 s, not the warm-up's 20-30 s
    assert short["rss_mb_per_min_second_half"] == pytest.approx(0, abs=1e-9)


def test_memory_trace_samples_rss_and_heap():
    trace = MemoryTrace(0.01)
    trace.start()
    import time

    time.sleep(0.1)
    samples = trace.stop()
    assert len(samples) >= 3 and all(s[1] > 0 for s in samples)
    if heap_mb() is not None:
        assert all(s[2] > 0 and s[3] >= 0 for s in samples)
