"""The live actuator: commands published on the action endpoint (ZMQ PUB, `rig/wire.py`'s `action` and `stop`
messages) with `send`, else a dry run that only logs them. Every command is also appended to `log_path` (JSON
lines), flagged `sent` or not. The simulated arm is `vla_lib.sim.rig.SimRig` itself; the replay keeps its commands
(`robot_io.RecordingActuator`).

Thread-safe: the action tick publishes from the loop's thread, the sensor guard's stop from the receiver's. After a
stop, until `release()`, a move that was decided before the stop landed goes out as a hold (zero deltas): nothing
that moves the arm follows a stop on the wire."""
from __future__ import annotations

import json
import threading
import time

import numpy as np

from vla_lib.rig import wire


class ActionPublisher:
    def __init__(self, endpoint: str, send: bool = False, log_path=None):
        self.endpoint, self.send = endpoint, send
        self.sent = self.dry = self.stops = 0
        self.stop_published: list[dict] = []  # per stop: the crossing sample's time and when it went out
        self._lock = threading.Lock()
        self._stopped = False
        self._sock = None
        self._log = open(log_path, "w") if log_path else None
        self._log_lock = threading.Lock()
        if send:
            import zmq

            self._sock = zmq.Context.instance().socket(zmq.PUB)
            self._sock.setsockopt(zmq.SNDHWM, 1000)
            self._sock.bind(endpoint)

    def apply(self, cmd) -> None:
        if not np.isfinite(cmd.target).all():  # no pose yet: nothing to command against (the executor held)
            return
        with self._lock:
            kind, delta, target = cmd.kind, cmd.delta, cmd.target
            if self._stopped and kind == "move":  # decided before a stop that has gone out since: hold instead
                kind, delta, target = "stop", np.zeros(6), cmd.pose if cmd.pose is not None else cmd.target
            now = time.time()
            if self._sock is not None:
                self._sock.send_multipart(wire.pack_action(cmd.t, now, delta, target))
                self.sent += 1
            else:
                self.dry += 1
            sent = self._sock is not None
        if self._log:  # outside the lock: a stop never waits for a log write
            line = json.dumps({"t": cmd.t, "send_time": now, "sent": sent, "kind": kind,
                               "delta": np.round(delta, 5).tolist(), "target": np.round(target, 4).tolist(),
                               "reasons": cmd.reasons, "chunk": cmd.chunk_id, "step": cmd.chunk_step,
                               "delay_steps": round(cmd.delay_steps, 3)})
            self._write(line)

    def stop(self, t_sample: float, reason: str) -> None:
        with self._lock:
            self._stopped = True
            now = time.time()
            if self._sock is not None:
                self._sock.send_multipart(wire.pack_stop(t_sample, now, reason))
            self.stops += 1
            sent = self._sock is not None
            self.stop_published.append({"t_sample": t_sample, "send_time": now, "sent": sent, "reason": reason})
        if self._log:
            self._write(json.dumps({"t": t_sample, "send_time": now, "sent": sent, "kind": "stop", "reason": reason}))

    def release(self) -> None:
        with self._lock:
            self._stopped = False
            now = time.time()
            if self._sock is not None:
                self._sock.send_multipart(wire.pack_release(now))
        if self._log:
            self._write(json.dumps({"send_time": now, "kind": "release"}))

    def _write(self, line: str) -> None:
        with self._log_lock:
            if self._log:
                self._log.write(line + "\n")

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close(linger=200)
                self._sock = None
        with self._log_lock:
            if self._log:
                self._log.close()
                self._log = None
