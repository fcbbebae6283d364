"""Receivers for the rig's three streams, each in its own thread, each owning its socket.

- `RobotReceiver`: ZMQ SUB (connects to the robot PC's PUB), keeps a ring of robot samples on the robot's own
  origin stamps.
- `CameraReceiver`: ZMQ PULL (binds; the camera senders PUSH to it), keeps the latest JPEG per view.
- `SensorReceiver`: UDP (binds), keeps a ring buffer of the sensor samples on the sensor's own stamps.

Whatever is malformed is counted by reason and dropped: wrong size, NaN/inf, bad framing or JSON, not a JPEG, an
unknown camera, a stamp not after the stream's previous one (`non_monotonic`). Nothing malformed reaches the buffers
(and so never the model), and nothing raised by a bad packet stops a receiver. Every loop waits at most `poll_s`
before it looks at its stop flag again.

Clock offsets (`ClockOffset`): each stream's offset = receive time (local clock) - send stamp (the sender's clock),
estimated as the running minimum over a sliding window (`clock_window_s`). Transport and queueing delays only ever
add to that difference, so the least-delayed message of the window is the best estimate (clock difference + the
minimum latency); the window lets it follow drift. The loop maps a stream's stamps onto the robot clock with
stamp + offset(stream) - offset(robot). The minimum latencies of the streams do not cancel exactly: the error is
the difference of their minimum one-way latencies (tens of microseconds on loopback, about a millisecond on a LAN).
"""
from __future__ import annotations

import collections
import socket
import threading
import time
from collections import Counter

import numpy as np

from vla_lib.rig import wire


class ClockOffset:
    """Running minimum of (receive time - send stamp) over the last `window_s` seconds (monotonic deque, O(1))."""

    def __init__(self, window_s: float = 10.0):
        self.window_s = window_s
        self._q: collections.deque = collections.deque()
        self.count = 0

    def update(self, recv: float, send: float) -> None:
        v = recv - send
        q = self._q
        while q and q[-1][1] >= v:
            q.pop()
        q.append((recv, v))
        while q[0][0] < recv - self.window_s:
            q.popleft()
        self.count += 1

    @property
    def value(self) -> float | None:
        return self._q[0][1] if self._q else None


class StreamStats:
    def __init__(self):
        self.messages = 0  # datagrams / ZMQ messages seen
        self.accepted = 0  # samples / frames kept (a sensor datagram holds several)
        self.dropped: Counter = Counter()  # reason -> samples or messages dropped
        self.last_recv: float | None = None

    def as_dict(self) -> dict:
        return {"messages": self.messages, "accepted": self.accepted, "dropped": int(sum(self.dropped.values())),
                "dropped_by_reason": dict(self.dropped)}


def parse_udp_endpoint(endpoint: str) -> tuple[str, int]:
    """'udp://host:port' or 'host:port' -> (host, port)."""
    rest = endpoint.split("://", 1)[1] if "://" in endpoint else endpoint
    host, _, port = rest.rpartition(":")
    return host or "0.0.0.0", int(port)


class _Receiver(threading.Thread):
    name_ = "receiver"

    def __init__(self, endpoint: str, clock_window_s: float = 10.0, poll_s: float = 0.05, recorder=None):
        super().__init__(name=f"rig-{self.name_}", daemon=True)
        self.endpoint, self.poll_s, self.recorder = endpoint, poll_s, recorder
        self.stats = StreamStats()
        self.clock = ClockOffset(clock_window_s)
        self.lock = threading.Lock()
        self._halt = threading.Event()
        self._ready = threading.Event()
        self.error: BaseException | None = None

    def start_and_wait(self, timeout: float = 5.0) -> "_Receiver":
        self.start()
        if not self._ready.wait(timeout) or self.error:
            raise RuntimeError(f"{self.name_} receiver could not open {self.endpoint}: {self.error}")
        return self

    def stop(self, timeout: float = 2.0) -> None:
        self._halt.set()
        self.join(timeout)

    def run(self):
        try:
            sock = self._open()
        except BaseException as e:  # reported by start_and_wait
            self.error = e
            self._ready.set()
            return
        self._ready.set()
        try:
            self._loop(sock)
        finally:
            if isinstance(sock, socket.socket):
                sock.close()
            else:
                sock.close(linger=0)

    def _drop(self, reason: str, n: int = 1) -> None:
        self.stats.dropped[reason] += n

    def _accept(self, message) -> None:
        """Count one received message and hand it to the stream's parser; a malformed one is counted by reason and
        dropped, and nothing a message does stops the stream."""
        recv = time.time()
        self.arrived = time.perf_counter()  # for the sensor guard's reaction time
        self.stats.messages += 1
        self.stats.last_recv = recv
        try:
            self._handle(message, recv)
        except wire.WireError as e:
            self._drop(e.reason)
        except Exception as e:  # never let one message stop the stream
            self._drop(f"error:{type(e).__name__}")


class _ZmqReceiver(_Receiver):
    def _loop(self, sock):
        import zmq

        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        while not self._halt.is_set():
            if not poller.poll(int(self.poll_s * 1e3)):
                continue
            for _ in range(1000):  # drain what is queued, bounded
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                self._accept(frames)


class RobotReceiver(_ZmqReceiver):
    """Robot samples in a ring of `capacity` rows: origin stamps (robot clock), pose, joints, force."""

    name_ = "robot"

    def __init__(self, endpoint: str, capacity: int = 2000, **kw):
        super().__init__(endpoint, **kw)
        self.capacity = capacity
        self.times = np.zeros(capacity)
        self.pose = np.zeros((capacity, 6))
        self.force = np.zeros(capacity)
        self.n = 0  # total accepted (ring head = n % capacity)

    def _open(self):
        import zmq

        sock = zmq.Context.instance().socket(zmq.SUB)
        sock.setsockopt(zmq.RCVHWM, 100_000)
        sock.setsockopt(zmq.SUBSCRIBE, wire.ROBOT_TOPIC)
        sock.connect(self.endpoint)
        return sock

    def _handle(self, frames, recv):
        s = wire.unpack_robot(wire.split_robot_message(frames))
        with self.lock:
            if self.n and s.origin_ts <= self.times[(self.n - 1) % self.capacity]:
                raise wire.WireError("non_monotonic")
            i = self.n % self.capacity
            self.times[i], self.pose[i], self.force[i] = s.origin_ts, s.pose, s.force
            self.n += 1
            self.clock.update(recv, s.send_ts)
        self.stats.accepted += 1
        if self.recorder is not None:
            self.recorder.robot(recv, s)

    def latest(self, since_s: float) -> tuple[np.ndarray, np.ndarray]:
        """(times, pose) of the samples of the last `since_s` seconds of robot stamps, oldest first (copies)."""
        with self.lock:
            m = min(self.n, self.capacity)
            idx = (np.arange(self.n - m, self.n)) % self.capacity
            t, p = self.times[idx], self.pose[idx]
        keep = t > (t[-1] - since_s) if len(t) else slice(None)
        return t[keep].copy(), p[keep].copy()


class CameraReceiver(_ZmqReceiver):
    """Latest frame per view: (sequence number, stamp on the camera clock, camera name, JPEG bytes)."""

    name_ = "camera"

    def __init__(self, endpoint: str, camera_views: dict[str, str], bind: bool = True, **kw):
        super().__init__(endpoint, **kw)
        self.camera_views, self.bind = camera_views, bind
        self.latest: dict[str, tuple[int, float, str, bytes]] = {}
        self.last_stamp: dict[str, float] = {}
        self.per_view: Counter = Counter()
        self.seq = 0

    def _open(self):
        import zmq

        sock = zmq.Context.instance().socket(zmq.PULL)
        sock.setsockopt(zmq.RCVHWM, 10_000)
        sock.bind(self.endpoint) if self.bind else sock.connect(self.endpoint)
        return sock

    def _handle(self, frames, recv):
        f = wire.unpack_camera(frames)
        view = wire.camera_view(f.camera, self.camera_views)
        if view is None:
            raise wire.WireError("unknown_camera", f.camera)
        with self.lock:
            if f.camera in self.last_stamp and f.timestamp <= self.last_stamp[f.camera]:
                raise wire.WireError("non_monotonic")
            self.last_stamp[f.camera] = f.timestamp
            self.seq += 1
            self.latest[view] = (self.seq, f.timestamp, f.camera, f.jpeg)
            self.clock.update(recv, f.send_time)
        self.per_view[view] += 1
        self.stats.accepted += 1
        if self.recorder is not None:
            self.recorder.frame(view, f)


class SensorReceiver(_Receiver):
    """Sensor samples in a ring buffer of `capacity` rows on the sensor's own stamps (strictly increasing)."""

    name_ = "sensor"

    def __init__(self, endpoint: str, capacity: int = 4096, rcvbuf_bytes: int = 8 << 20, **kw):
        super().__init__(endpoint, **kw)
        self.capacity = capacity
        self.rcvbuf_bytes = rcvbuf_bytes
        self.times = np.zeros(capacity)
        self.forces = np.zeros(capacity, np.float32)
        self.alines = np.zeros((capacity, wire.ALINE_POINTS), np.float32)
        self.n = 0
        self.last_ts = -np.inf
        self.rcvbuf = None
        # called with (stamps, forces, A-lines, arrival perf_counter) of every received packet, before any is dropped,
        # in this thread: the sensor guard (runtime/guard.py) sees each sample as it arrives, not at the next tick
        self.on_batch = None
        self.on_guard_error = None  # called with the exception when on_batch raises (the runtime latches a stop)

    def _open(self):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf_bytes)  # the kernel may cap it
        self.rcvbuf = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        sock.bind(parse_udp_endpoint(self.endpoint))
        sock.settimeout(self.poll_s)
        self.address = sock.getsockname()
        return sock

    def _loop(self, sock):
        while not self._halt.is_set():
            try:
                data = sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                if self._halt.is_set():
                    break
                raise
            self._accept(data)

    def _guard(self, raw) -> None:
        """The guard on a datagram's packets; a packet without a finite stamp gets the newest finite one seen (its
        force is still checked). A guard that raises must not fail open: the error goes to `on_guard_error`."""
        finite = np.isfinite(raw["ts"])
        known = [v for v in (self.last_ts, *raw["ts"][finite]) if np.isfinite(v)]
        try:
            self.on_batch(np.where(finite, raw["ts"], max(known) if known else 0.0), raw["force"], raw["aline"],
                          self.arrived)
        except Exception as e:
            if self.on_guard_error is None:
                raise
            self.on_guard_error(e)

    def _handle(self, data, recv):
        raw = wire.sensor_packets(data)
        if self.on_batch is not None:
            # the guard first, on every packet as sent: a NaN force, a crossing whose A-line has a NaN point, or one
            # stamped behind the last (a clock step) is dropped below, but must still stop the arm
            self._guard(raw)
        rec, bad = wire.finite_packets(raw)
        if bad:
            self._drop("non_finite", bad)
        if not len(rec):
            return
        ts = rec["ts"]
        # strictly increasing within the datagram and after the last accepted stamp
        ok = ts > np.maximum.accumulate(np.concatenate([[self.last_ts], ts[:-1]]))
        if not ok.all():
            self._drop("non_monotonic", int((~ok).sum()))
            rec = rec[ok]
            if not len(rec):
                return
        k = len(rec)
        with self.lock:
            idx = np.arange(self.n, self.n + k) % self.capacity
            self.times[idx], self.forces[idx], self.alines[idx] = rec["ts"], rec["force"], rec["aline"]
            self.n += k
            self.last_ts = float(rec["ts"][-1])
            for s in rec["send_ts"][[0, -1]] if k > 1 else rec["send_ts"]:
                self.clock.update(recv, float(s))
        self.stats.accepted += k
        if self.recorder is not None:
            self.recorder.sensor(rec)

    def latest(self, rows: int, after: float = -np.inf) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Of the last `rows` samples, those stamped after `after` (sensor clock): times, forces, A-lines, oldest
        first (copies; only the selected A-lines are copied)."""
        with self.lock:
            m = min(self.n, self.capacity, rows)
            idx = np.arange(self.n - m, self.n) % self.capacity
            idx = idx[self.times[idx] > after]
            return self.times[idx], self.forces[idx], self.alines[idx]


def udp_rcvbuf_errors() -> int | None:
    """System-wide UDP receive-buffer overflows (/proc/net/snmp, Linux); None where unavailable."""
    try:
        lines = [ln.split() for ln in open("/proc/net/snmp") if ln.startswith("Udp:")]
        return int(lines[1][lines[0].index("RcvbufErrors")])
    except (OSError, ValueError, IndexError):
        return None
