"""`--mode live`: the runtime's control loop (vla_lib/runtime) on the rig's streams (or on simulated senders replaying a session), dry run
unless `live.send_actions`; writes `outputs/<run>/live/report.json`, `ticks.jsonl` and `actions.jsonl`.

report.json: `action_hz` (measured), `action_steps`, `deadline_misses` (+ `deadline_miss_fraction`),
`action_latency_ms_p50/p95/p99`, `actions_sent` (published) and `actions_dry_run` (logged only), `send_actions`,
`streams` (per stream: messages, accepted, dropped with reasons, clock offset), `staleness_s` (per stream at the
ticks: p50, p99, max), `runtime` (interventions per kind, the latched stop and what tripped it, guard trips with their reaction time), `stops_published`, `senders` (what the simulated senders sent and
dropped on purpose), `lost` (sent by the senders - accepted - dropped by the receivers, per stream),
`udp_rcvbuf_errors` (system-wide kernel drops during the run), `rss_mb_start/end`, VL refresh figures, the session
recorded (if `live.record`).
"""
from __future__ import annotations

import json
import time
from array import array
from dataclasses import replace
from pathlib import Path

import numpy as np

from vla_lib.jsonio import json_safe, write_json
from vla_lib.rig.memory import rss_mb


def replay_session(cfg):
    """(Session, instruction) the simulated senders replay: `live.replay_session`, else the first held-out session
    with sensor: the validation sessions recorded in the checkpoint when there is one, else those of the split
    drawn from `data.split_seed`."""
    from vla_lib.data.recorder_formats import read_session

    if cfg.live.replay_session:
        session = read_session(cfg.live.replay_session)
        root = Path(cfg.data.root)
        group = next((g for g in cfg.data.groups if session.path.resolve() in
                      {p.resolve() for p in root.glob(g.glob)}), None)
        return session, (group.instruction if group else cfg.data.groups[0].instruction)
    from vla_lib.data.samples import build_index
    from vla_lib.data.split import split_sessions
    from vla_lib.evaluation.run import split
    from vla_lib.policy.loading import checkpoint_path

    if checkpoint_path(cfg).exists():
        index, val_ids = split(cfg)
    else:  # no trained heads (the untrained policy of the tests and the soak): the split from split_seed
        index = build_index(cfg.data)
        val_ids = split_sessions(index, cfg.data)[1]
    with_sensor = [s for s in val_ids if index.sessions[s].has_sensor]
    sid = (with_sensor or val_ids)[0]
    return index.sessions[sid], index.table.loc[index.table.session_id == sid, "instruction"].iloc[0]


def run_live(cfg, policy=None, log=print, session=None, senders_factory=None, on_tick_monitor=None) -> dict:
    """`senders_factory(live, session)` -> a started sender object with `stop()` -> counts (default: `SimulatedSenders`
    threads in this process, when `live.simulate_senders`); `on_tick_monitor(io)` is started in a thread after the
    receivers (the soak benchmark samples memory with it)."""
    from vla_lib.rig.receivers import udp_rcvbuf_errors
    from vla_lib.rig.record import SessionRecorder
    from vla_lib.rig.senders import SimulatedSenders
    from vla_lib.runtime.live_io import LiveRobotIO
    from vla_lib.runtime.loop import Runtime

    live = cfg.live
    out, policy, session, instruction = _prepare(cfg, policy, session, log)
    rss_start = rss_mb()
    udp_errors_start = udp_rcvbuf_errors()
    recorder = SessionRecorder(out) if live.record else None
    io = LiveRobotIO(live, cfg.data, recorder, action_log=out / "actions.jsonl").start()
    runtime = Runtime.from_config(cfg, io.actuator)  # the same runtime as the closed loop's, the rig's actuator
    if cfg.runtime.limits.min_oct_distance_mm is not None:
        log("protections: force stop on; OCT distance stop off on the live path (runtime.limits.min_oct_distance_mm "
            "needs an A-line decoder for your OCT, which the live path does not have)")
    rig = None
    try:
        if live.simulate_senders and senders_factory is not None:
            rig = senders_factory(live, session)
            log(f"simulated senders (own process) replaying {session.path.name}")
        elif live.simulate_senders:
            rig = SimulatedSenders(session, live.robot_endpoint, live.camera_endpoint, live.sensor_endpoint,
                               live.camera_views, live.replay_cameras or None, live.replay_loop,
                               live.sim_sensor_batch_s, live.sim_sensor_drop_fraction).start()
            log(f"simulated senders replaying {session.path.name} ({'looped' if live.replay_loop else 'once'})")
        report = _run_ready(cfg, policy, io, runtime, instruction, out, on_tick_monitor, log)
    finally:
        io.stop_watchdog()  # before the senders stop: their end is the run's, not a sensor fault
        senders = rig.stop() if rig is not None else None
        time.sleep(0.1)  # let the last datagrams in flight land before the receivers stop
        io.stop()
        recorded = recorder.close({"camera_s": io.offset("camera"), "sensor_s": io.offset("sensor")}) if recorder else None
    summary = summarise(report, io, out / "ticks.jsonl", senders, rss_start, rss_mb(), udp_errors_start,
                        udp_rcvbuf_errors(), live)
    if runtime.latch.stopped:
        log(f"STOPPED: {runtime.latch.reason} (a latched stop: moves again only after an operator's release)")
    summary["recorded_session"] = str(recorded) if recorded else None
    summary["instruction"] = instruction
    write_json(out / "report.json", summary)
    log(f"report: {out / 'report.json'}")
    return summary


def _prepare(cfg, policy, session, log) -> tuple:
    """Before any stream starts: loopback endpoints for simulated senders, the output folder, torch threads, the
    policy and the instruction. Returns (out, policy, session, instruction)."""
    import torch

    live = cfg.live
    if live.simulate_senders and not _all_loopback(live):
        # the senders play the robot PC, cameras and sensor here: a rig's addresses (tcp://ROBOT_PC:5556) are not ours
        free_loopback_endpoints(live)
        log(f"simulated senders: every endpoint on loopback (robot {live.robot_endpoint}, cameras "
            f"{live.camera_endpoint}, sensor {live.sensor_endpoint}, actions {live.action_endpoint})")
    out = Path(cfg.run_dir) / "live"
    out.mkdir(parents=True, exist_ok=True)
    if live.torch_threads:
        torch.set_num_threads(live.torch_threads)
    if policy is None:
        from vla_lib.policy.loading import load_policy

        policy = load_policy(cfg)
    instruction = live.instruction
    if live.simulate_senders and session is None:
        session, replay_instruction = replay_session(cfg)
        instruction = instruction or replay_instruction
    instruction = instruction or cfg.data.groups[0].instruction
    return out, policy, session, instruction


def _run_ready(cfg, policy, io, runtime, instruction: str, out: Path, on_tick_monitor, log):
    """Inside run_live's try (its finally stops senders and receivers): the monitor, the wait for every stream,
    then the control loop with its ticks streamed to ticks.jsonl. Returns the loop's report."""
    from vla_lib.runtime.loop import run_loop

    live = cfg.live
    if on_tick_monitor is not None:
        import threading

        threading.Thread(target=on_tick_monitor, args=(io,), daemon=True, name="monitor").start()
    missing = io.wait_ready(live.ready_timeout_s, need_sensor=live.require_sensor)
    if missing:
        raise TimeoutError(f"no data within {live.ready_timeout_s:g} s from: {missing} "
                           f"(endpoints: robot {live.robot_endpoint}, cameras {live.camera_endpoint}, "
                           f"sensor {live.sensor_endpoint})")
    warm_up = getattr(policy, "warm_up", None)  # compile and capture before the loop's threads start (VLAPolicy)
    if warm_up is not None:
        warm_up(instruction, io.views()[0], io.sensor_window(),
                io.pose_history(policy.history_steps) if policy.history_steps else None)
    log(f"live loop for {live.duration_s:g} s at {1 / cfg.data.action_dt_s:g} Hz ({cfg.runtime.execution}, "
        f"guard {'on' if cfg.runtime.guard else 'OFF'}), "
        f"{'SENDING actions to ' + live.action_endpoint if live.send_actions else 'dry run (actions logged only)'}")
    with open(out / "ticks.jsonl", "w") as ticks:  # streamed: a run of any length keeps no per-tick records
        return run_loop(policy, io, runtime, instruction, live.duration_s, live.vl_rate_hz,
                        tick_sink=lambda tick: ticks.write(tick_line(tick, io.last_ages)))


def summarise(report, io, ticks_path, senders, rss_start, rss_end, udp0, udp1, live) -> dict:
    s = report.summary
    streams = io.stream_stats()
    ages: dict[str, array] = {}
    with open(ticks_path) as f:  # the per-stream ages read back line by line from the streamed ticks (exact)
        for line in f:
            for k, v in json.loads(line)["ages"].items():
                col = ages.setdefault(k, array("d"))
                if v is not None:
                    col.append(v)
    staleness = {k: {"p50": float(np.percentile(v, 50)), "p99": float(np.percentile(v, 99)), "max": float(max(v))}
                 for k, v in ages.items() if v}
    t = report.columns.t
    span = (t[-1] - t[0]) if len(t) > 1 else 0.0
    steps = s["action_steps"]
    out = {
        "action_hz": (steps - 1) / span if span > 0 else None, "action_steps": steps,
        "deadline_misses": s["deadline_misses"], "deadline_miss_fraction": s["deadline_misses"] / max(steps, 1),
        "skipped_ticks": s["skipped_ticks"],
        **{k: s[k] for k in ("action_latency_ms_p50", "action_latency_ms_p95", "action_latency_ms_p99",
                             "action_period_ms", "vl_refreshes", "vl_encode_ms_p50", "vl_refresh_hz",
                             "staleness_s_p50", "staleness_s_max")},
        "send_actions": live.send_actions, "actions_sent": io.publisher.sent, "actions_dry_run": io.publisher.dry,
        "action_endpoint": live.action_endpoint, "stops_published": io.publisher.stop_published,
        "dropped": {k: v["dropped"] for k, v in streams.items()}, "streams": streams, "staleness_s": staleness,
        "clock_offsets_to_robot_s": {"camera": io.offset("camera"), "sensor": io.offset("sensor")},
        "runtime": {k: s[k] for k in ("execution", "guard", "interventions", "stopped", "stops", "guard_trips",
                                      "force_baseline_n", "inference_delay_steps_p50", "inference_delay_steps_max",
                                      "switch_jump_mm_s", "jerk_mm_s3")},
        "senders": senders, "udp_rcvbuf_errors": None if udp0 is None or udp1 is None else udp1 - udp0,
        "rss_mb_start": rss_start, "rss_mb_end": rss_end,
        "endpoints": {"robot": live.robot_endpoint, "camera": live.camera_endpoint, "sensor": live.sensor_endpoint},
    }
    if senders:
        sent = senders["sent"]
        out["lost"] = {k: sent[k] - streams[k]["accepted"] - streams[k]["dropped"] for k in ("robot", "camera", "sensor")}
    return out


def tick_line(tick: dict, ages: dict) -> str:
    """One line of ticks.jsonl: the tick's timing, per-stream ages, what the policy said and what went out."""
    cmd = tick["command"]
    return json.dumps(json_safe({
        "t": tick["t"], "latency_ms": tick["latency_ms"], "late_start_ms": tick["late_start_ms"],
        "missed": bool(tick["missed"]), "skipped_ticks": tick.get("skipped_ticks", 0),
        "frames_age_s": tick["staleness_s"], "ages": ages, "chunk0": tick["chunk"][0, :6], "kind": cmd.kind,
        "delta": cmd.delta, "target": cmd.target, "pose": cmd.pose, "reasons": cmd.reasons, "chunk": cmd.chunk_id,
        "step": cmd.chunk_step, "delay_steps": cmd.delay_steps})) + "\n"


def read_ticks(path) -> list[dict]:
    return [json.loads(line) for line in open(path)]


def untrained_policy(cfg, seed: int = 0):
    """A policy with randomly initialised heads (training-set stats, the configured backbone): for exercising the rig
    I/O, the tests and the soak benchmark without a trained checkpoint. Its actions mean nothing."""
    import torch

    from vla_lib.data.normalization import compute_stats
    from vla_lib.data.samples import build_index
    from vla_lib.policy.vla_policy import VLAPolicy
    from vla_lib.models.modeling_policy import Stage1Policy
    from vla_lib.vlm.interface import load_backbone

    stats = compute_stats(build_index(cfg.data))
    backbone = load_backbone(cfg.backbone)
    torch.manual_seed(seed)
    heads = Stage1Policy(replace(cfg.model, vl_dim=backbone.hidden_size), **stats.model_buffers()).eval()
    return VLAPolicy(heads, cfg, stats, backbone, "cpu")


def _all_loopback(live) -> bool:
    hosts = [e.split("://")[-1].rsplit(":", 1)[0] for e in
             (live.robot_endpoint, live.camera_endpoint, live.sensor_endpoint, live.action_endpoint)]
    return all(h in ("127.0.0.1", "localhost") for h in hosts)


def free_loopback_endpoints(live) -> None:
    """Point every endpoint at a free loopback port (simulated runs beside anything else on this machine)."""
    import socket

    def port():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    live.robot_endpoint = f"tcp://127.0.0.1:{port()}"
    live.camera_endpoint = f"tcp://127.0.0.1:{port()}"
    live.sensor_endpoint = f"127.0.0.1:{port()}"
    live.action_endpoint = f"tcp://127.0.0.1:{port()}"
