"""The guard on the live path: each sensor datagram holding a sample past the force limit publishes a stop on the
action endpoint from the receiver's thread (no action tick involved), once per latch, with its reaction time."""
from benchmarks.guard_reaction import measure


def test_a_crossing_sample_publishes_a_stop_at_once():
    r = measure(trips=5, every=3, timeout_s=20.0)
    assert r["trips"] == 5 and r["baseline_n"] == -3.0  # tared in free air, one stop per crossing (released)
    assert 0 < r["reaction_ms_p50"] <= r["reaction_ms_max"] and r["reaction_ms_p50"] < 50  # not the 100 ms tick
    assert r["control_loop_beside"] and r["loop_ticks"] > 0  # the control loop ran on the same runtime
