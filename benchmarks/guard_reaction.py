"""The sensor guard's reaction on the live path, over loopback: from the arrival of the datagram that holds the first
sample past the force limit to the stop message having been published on the action endpoint.

    python benchmarks/guard_reaction.py --trips 300

The real receivers (`LiveRobotIO`, `--send-actions`), the runtime's guard and publisher; a UDP sender streams the
sensor at 650 Hz in 5 ms datagrams (3 samples), free air for the tare, then every `--every` datagrams one sample past
the limit; after each stop a subscriber has received, the latch is released (as an operator would) and the stream
goes on. Prints p50 / p99 / max of the guard's reaction (arrival -> published) and of sender -> subscriber.
"""
from __future__ import annotations

import argparse
import json
import socket
import time

import numpy as np


def measure(trips: int = 300, every: int = 4, timeout_s: float = 60.0) -> dict:
    import zmq

    from vla_lib.config import RunConfig
    from vla_lib.rig import wire
    from vla_lib.rig.receivers import parse_udp_endpoint
    from vla_lib.rig.run import free_loopback_endpoints
    from vla_lib.runtime.live_io import LiveRobotIO
    from vla_lib.runtime.loop import Runtime

    cfg = RunConfig.from_dict({"live": {"send_actions": True}, "runtime": {"limits": {"force_limit_n": 1.5}}})
    free_loopback_endpoints(cfg.live)
    io = LiveRobotIO(cfg.live, cfg.data).start()
    runtime = Runtime.from_config(cfg, io.actuator)
    io.attach_guard(runtime.guard)
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, wire.STOP_TOPIC)
    sub.connect(cfg.live.action_endpoint)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    target = parse_udp_endpoint(cfg.live.sensor_endpoint)
    alines = np.zeros((3, wire.ALINE_POINTS), np.float32)
    t, k, e2e, deadline = 0.0, 0, [], time.time() + timeout_s
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
        udp.close()
        sub.close(linger=0)
        io.stop()
    reaction = np.array([tr["reaction_s"] for tr in runtime.guard.trips]) * 1e3
    e2e_ms = np.array(e2e) * 1e3
    return {"trips": len(reaction), "reaction_ms_p50": float(np.percentile(reaction, 50)),
            "reaction_ms_p99": float(np.percentile(reaction, 99)), "reaction_ms_max": float(reaction.max()),
            "sender_to_subscriber_ms_p50": float(np.percentile(e2e_ms, 50)),
            "sender_to_subscriber_ms_p99": float(np.percentile(e2e_ms, 99)),
            "baseline_n": runtime.guard.baseline}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trips", type=int, default=300)
    ap.add_argument("--every", type=int, default=4)
    args = ap.parse_args()
    print(json.dumps(measure(args.trips, args.every)))


if __name__ == "__main__":
    main()
