"""Loopback soak of the live rig I/O with the policy in the loop (issue: 10 min at full rates on the 2-core CPU).

    .venv/bin/python benchmarks/live_soak.py --duration 600            # the 10-minute soak
    .venv/bin/python benchmarks/live_soak.py --duration 60 --sensor-hz 650

A synthetic recv_all session (`--session-s` long, 640x360 JPEGs, cameras at 2 Hz, robot 100 Hz, sensor
`--sensor-hz`) is written once under outputs/soak/sessions and replayed in a loop by the simulated senders in their
own process (on the rig they are other machines), the five cameras of the rig by default (`--views`). The receivers, the VL thread and
the 10 Hz action loop run in this process, dry run, with the tiny VLM and the demo's `small` heads (random weights
unless `--checkpoint`). Prints deadline misses, action latency p50/p95/p99, packets sent / received / dropped / lost
per stream and the memory verdict: RSS at the end of the warm-up (`--warmup`, 30 s) and at the end, and its slope in
MB/min over the second half of the run (FLAT within `--flat-mb-per-min`), beside glibc's heap split into bytes in
use and bytes freed but kept (fragmentation shows there, not in use). Writes outputs/soak/live_soak/live/report.json
and memory.json (every `--rss-every` s: seconds, RSS, heap in use, heap free, MB).
"""
import argparse
import json
import time
from pathlib import Path

import numpy as np

from vla_lib.config import DataConfig, RunConfig, SyntheticConfig
from vla_lib.data.recorder_formats import read_session
from vla_lib.data.synthetic import _make_spec, write_recv_all_session
from vla_lib.rig.memory import MemoryTrace, memory_verdict
from vla_lib.live import free_loopback_endpoints, run_live, untrained_policy
from vla_lib.rig.senders import RigProcess


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--duration", type=float, default=600.0)
    p.add_argument("--session-s", type=float, default=30.0)
    p.add_argument("--sensor-hz", type=float, default=1000.0)
    p.add_argument("--out", default="outputs/soak")
    p.add_argument("--checkpoint", default="")
    p.add_argument("--rss-every", type=float, default=1.0, help="memory sampling period, s")
    p.add_argument("--warmup", type=float, default=30.0, help="s of warm-up (model, buffers) before memory counts")
    p.add_argument("--flat-mb-per-min", type=float, default=0.5,
                   help="the verdict's threshold on the RSS slope over the second half")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the policy")
    p.add_argument("--views", nargs="*", default=None,
                   help="cameras streamed and encoded (default: the rig's five; the demo's policy uses two)")
    p.add_argument("--tracemalloc", action="store_true", help="print the Python allocations that grew after 30 s")
    args = p.parse_args()

    out = Path(args.out)
    cfg = RunConfig.from_yaml("params/demo.yaml")
    # the session's folder is the one the first dataset group's glob matches (the untrained policy's stats read it)
    group_dir = Path(cfg.data.groups[0].glob).parent
    sessions = out / "sessions" / f"sensor{args.sensor_hz:g}_{args.session_s:g}s" / group_dir
    if not sessions.exists():
        t = time.time()
        syn = SyntheticConfig(image_width=640, image_height=360, sensor_hz=args.sensor_hz, duration_s=args.session_s)
        rng = np.random.default_rng(0)
        write_recv_all_session(sessions, _make_spec(rng, 1761580000.0, args.session_s, 1), syn, rng)
        print(f"wrote the soak session in {time.time() - t:.0f} s")
    session_path = sorted(sessions.glob("recv_all_*"))[0]
    session = read_session(session_path)

    cfg.run_name, cfg.output_root = "live_soak", str(out)
    cfg.data.root = str(sessions.parent)
    cfg.data.groups = cfg.data.groups[:1]
    cfg.data.views = args.views or list(DataConfig().views)  # full rates: every camera of the rig
    cfg.live.duration_s = args.duration
    cfg.live.simulate_senders = True
    cfg.live.replay_loop = True
    cfg.live.replay_cameras = list(cfg.data.views)
    cfg.live.torch_threads = args.threads
    free_loopback_endpoints(cfg.live)
    if args.checkpoint:
        from vla_lib.policy.loading import load_policy

        cfg.eval.checkpoint = args.checkpoint
        policy = load_policy(cfg, device="cpu")
    else:
        policy = untrained_policy(cfg)

    trace = MemoryTrace(args.rss_every)

    def monitor(io):  # started once the receivers run: memory from then on (t = 0)
        trace.start()
        if args.tracemalloc:
            import tracemalloc

            tracemalloc.start(4)
            time.sleep(30)
            first = tracemalloc.take_snapshot()
            time.sleep(max(0.0, args.duration - 40))
            for stat in tracemalloc.take_snapshot().compare_to(first, "traceback")[:8]:
                print(stat, *stat.traceback.format()[-4:], sep="\n  ")

    def senders(live, s):
        return RigProcess(s.path, robot_endpoint=live.robot_endpoint, camera_endpoint=live.camera_endpoint,
                          sensor_endpoint=live.sensor_endpoint, camera_views=live.camera_views,
                          views=live.replay_cameras, loop=True, sensor_batch_s=live.sim_sensor_batch_s).start()


    load = open("/proc/loadavg").read().split()[:3] if Path("/proc/loadavg").exists() else None
    t0 = time.time()
    r = run_live(cfg, policy, session=session, senders_factory=senders, on_tick_monitor=monitor)
    wall = time.time() - t0
    load_end = open("/proc/loadavg").read().split()[:3] if Path("/proc/loadavg").exists() else None
    sent = (r["senders"] or {}).get("sent", {})
    print(f"\nsoak: {args.duration:.0f} s loop ({wall:.0f} s wall), sensor {args.sensor_hz:g} Hz, robot 100 Hz, "
          f"{len(cfg.data.views)} cameras at 2 Hz; load average before {load}, after {load_end}")
    print(f"action loop: {r['action_steps']} steps at {r['action_hz']:.3f} Hz; deadline misses {r['deadline_misses']} "
          f"({100 * r['deadline_miss_fraction']:.2f} %, skipped ticks {r['skipped_ticks']}); latency ms "
          f"p50 {r['action_latency_ms_p50']:.1f} p95 {r['action_latency_ms_p95']:.1f} p99 {r['action_latency_ms_p99']:.1f}; "
          f"VL {r['vl_refresh_hz']:.2f} Hz (encode p50 {r['vl_encode_ms_p50']:.0f} ms)")
    for k in ("robot", "camera", "sensor"):
        st = r["streams"][k]
        print(f"  {k:6s}: sent {sent.get(k)}, accepted {st['accepted']}, dropped {st['dropped']} {st['dropped_by_reason']}, "
              f"lost {(r.get('lost') or {}).get(k)}; staleness p99 "
              f"{max(v['p99'] for n, v in r['staleness_s'].items() if (n == k) or (k == 'camera' and n.startswith('View'))):.3f} s")
    print(f"  sensor datagrams {sent.get('sensor_datagrams')}; kernel UDP receive-buffer drops {r['udp_rcvbuf_errors']}")
    samples = trace.stop()
    m = memory_verdict(samples, args.warmup)
    slope = m["rss_mb_per_min_second_half"]
    slope = float("nan") if slope is None else slope  # too few samples in the second half
    heap = (f"; C heap in use {m['heap_in_use_mb_warmup']:.0f} -> {m['heap_in_use_mb_end']:.0f} MB "
            f"({m['heap_in_use_mb_per_min_second_half']:+.2f} MB/min), freed but kept {m['heap_free_mb_warmup']:.0f} "
            f"-> {m['heap_free_mb_end']:.0f} MB" if m["heap_in_use_mb_per_min_second_half"] is not None else "")
    print(f"memory: RSS MB start {r['rss_mb_start']:.0f}, at {args.warmup:g} s {m['rss_mb_warmup']:.0f}, "
          f"end {m['rss_mb_end']:.0f} (max {max(s[1] for s in samples):.0f}); slope over the second half "
          f"{slope:+.2f} MB/min{heap}")
    flat = abs(slope) <= args.flat_mb_per_min
    verdict = "FLAT" if flat else "GROWING" if slope == slope else "UNKNOWN (run too short)"
    print(f"memory verdict: {verdict} (|slope| {'<=' if flat else '>'} {args.flat_mb_per_min:g} MB/min over the "
          f"second half)")
    print(f"summary: {args.duration:.0f} s, load {load[0] if load else '?'} -> {load_end[0] if load_end else '?'}; "
          f"misses {r['deadline_misses']} of {r['action_steps']} ({100 * r['deadline_miss_fraction']:.2f} %); "
          f"latency p50 / p95 / p99 {r['action_latency_ms_p50']:.1f} / {r['action_latency_ms_p95']:.1f} / "
          f"{r['action_latency_ms_p99']:.1f} ms; lost {r.get('lost')}; RSS {m['rss_mb_warmup']:.0f} -> "
          f"{m['rss_mb_end']:.0f} MB, {slope:+.2f} MB/min ({verdict})")
    (out / "live_soak" / "live" / "memory.json").write_text(json.dumps({**m, "samples": samples}))
    print(f"report: {out / 'live_soak' / 'live' / 'report.json'}")


if __name__ == "__main__":  # the senders' process is spawned: it re-imports this file
    main()
