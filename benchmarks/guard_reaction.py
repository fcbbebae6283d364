"""The sensor guard's reaction on the live path, over loopback: from the arrival of the datagram that holds the first
sample past the force limit to the stop message having been published on the action endpoint.

    python benchmarks/guard_reaction.py --trips 300

The real receivers (`LiveRobotIO`, `--send-actions`), the runtime's guard and publisher; a UDP sender streams the
sensor at 650 Hz in 5 ms datagrams (3 samples), free air for the tare, then every `--every` datagrams one sample past
the limit; after each stop a subscriber has received, the latch is released (as an operator would) and the stream
goes on. With `--loop` (default) the control loop runs beside it on the same runtime, as in `--mode live`: a VL
thread at 2 Hz and the 10 Hz tick, their policy burning ~30 ms / ~10 ms of CPU per call (torch matmuls), so the guard
competes for the interpreter as it would on the rig (no robot or camera stream: the ticks hold). Prints p50 / p99 /
max of the guard's reaction (arrival -> published) and of sender -> subscriber.
"""
from __future__ import annotations

import argparse
import json
import socket
import time

import numpy as np


class BusyPolicy:
    """Stands in for the VLA on the CPU: its encode and act cost what a small model's do; its chunks are zero."""

    history_steps = 0

    def __init__(self):
        import torch

        self.torch, self.x = torch, torch.randn(384, 384)

    def _burn(self, ms: float) -> None:
        end = time.perf_counter() + ms / 1e3
        while time.perf_counter() < end:
            self.x = self.torch.tanh(self.x @ self.x)

    def encode(self, instructions, views):
        self._burn(30)
        return np.zeros((1, 1, 4), np.float32), np.ones((1, 1), bool)

    def act(self, features, mask, window, history, contact=None):
        self._burn(10)
        return np.zeros((1, 8, 7), np.float32)


def measure(trips: int = 300, every: int = 4, timeout_s: float = 60.0, loop: bool = True) -> dict:
    import zmq

    from vla_lib.config import RunConfig
    from vla_lib.rig import wire
    from vla_lib.rig.receivers import parse_udp_endpoint
    from vla_lib.live import free_loopback_endpoints
    from vla_lib.runtime.live_io import LiveRobotIO
    from vla_lib.runtime.loop import Runtime

    import threading

    import torch

    from vla_lib.runtime.loop import run_loop

    torch.set_num_threads(1)
    cfg = RunConfig.from_dict({"live": {"send_actions": True}, "runtime": {
        "limits": {"force_limit_n": 1.5}, "faults": {"robot_stale": "hold", "camera_stale": "continue"}}})
    free_loopback_endpoints(cfg.live)
    io = LiveRobotIO(cfg.live, cfg.data).start()
    runtime = Runtime.from_config(cfg, io.actuator)
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, wire.STOP_TOPIC)
    sub.connect(cfg.live.action_endpoint)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    target = parse_udp_endpoint(cfg.live.sensor_endpoint)
    alines = np.zeros((3, wire.ALINE_POINTS), np.float32)
    t, k, e2e, deadline = 0.0, 0, [], time.time() + timeout_s
    ticks, done = {}, threading.Event()
    if loop:
        thread = threading.Thread(target=lambda: ticks.update(run_loop(
            BusyPolicy(), io, runtime, "", timeout_s, vl_rate_hz=2.0, tick_sink=lambda tick: None,
            until=done.is_set).summary), daemon=True)
        thread.start()
    else:
        io.attach_guard(runtime.guard)
    try:
        time.sleep(0.3)  # the subscriber joins
        while len(e2e) < trips and time.time() < deadline:
            stamps = t + np.arange(3) / 650.0
            force = np.full(3, -3.0, np.float32)
            over = t > 0.2 and k % every == 0  # past the tare: one datagram in `every` crosses the limit
            if over:
                force[1] = -3.0 + 2.0  # 2 N above the baseline, in the middle sample
            sent = time.time()
            udp.sendto(wire.pack_sensor(stamps, sent, force, alines), target)
            if over:
                if not sub.poll(1000):
                    raise RuntimeError(f"no stop message within 1 s of trip {len(e2e) + 1}")
                t_sample, send_ts, reason = wire.unpack_stop(sub.recv_multipart())
                e2e.append(time.time() - sent)
                runtime.release()  # the operator
            t += 3 / 650.0
            k += 1
            time.sleep(0.005)
    finally:
        io.stop_watchdog()  # the sender has stopped: the end of the measurement, not a sensor fault
        done.set()
        if loop:
            thread.join(timeout=10)
        udp.close()
        sub.close(linger=0)
        io.stop()
    reaction = np.array([tr["reaction_s"] for tr in runtime.guard.trips if tr["kind"] == "guard_stop"]) * 1e3
    e2e_ms = np.array(e2e) * 1e3
    return {"trips": len(reaction), "reaction_ms_p50": float(np.percentile(reaction, 50)),
            "reaction_ms_p99": float(np.percentile(reaction, 99)), "reaction_ms_max": float(reaction.max()),
            "sender_to_subscriber_ms_p50": float(np.percentile(e2e_ms, 50)),
            "sender_to_subscriber_ms_p99": float(np.percentile(e2e_ms, 99)),
            "baseline_n": runtime.guard.baseline, "control_loop_beside": loop,
            "loop_ticks": ticks.get("action_steps"), "loop_deadline_misses": ticks.get("deadline_misses")}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trips", type=int, default=300)
    ap.add_argument("--every", type=int, default=4)
    ap.add_argument("--no-loop", action="store_true", help="the guard alone, no control loop beside it")
    args = ap.parse_args()
    print(json.dumps(measure(args.trips, args.every, loop=not args.no_loop)))


if __name__ == "__main__":
    main()
