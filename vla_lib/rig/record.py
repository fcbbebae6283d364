"""Record mode: what the receivers accept, written as a `recv_all_YYYYMMDD_HHMMSS` session (the rig's recorder
layout) that `vla_lib.data.recorder_formats.read_session` reads back.

- frames: `View{n}/{left,right}/<camera>_<ts:.3f>.jpg` and `View5/<camera>_<ts:.3f>.jpg`, the JPEG bytes as
  received, the stamp the sender's (as the rig's recorder names them);
- robot: `robot_state_<stamp>.csv` with the recorder's columns (recv_timestamp on the local clock, origin and send
  stamps, force_placeholder, joint_1..6, pose_x..pose_r), floats written losslessly (the wire's f32 values exactly);
- sensor: `sensor_data_<stamp>_<firstTsInt>.npz` {timestamps, send_timestamps, forces, alines (N,1025)}, uncompressed
  (memory-mappable). During the run the packets are appended to a `.part` file in their wire layout, so memory
  stays flat; `close()` streams them into the NPZ;
- `clock_offsets.json`: the live estimates (camera_s, sensor_s: seconds to add to reach the robot clock).
"""
from __future__ import annotations

import json
import threading
import time
import zipfile
from pathlib import Path

import numpy as np

from vla_lib.rig import wire

_CSV_COLUMNS = ["recv_timestamp", "origin_timestamp", "send_timestamp", "force_placeholder",
                *[f"joint_{i}" for i in range(1, 7)], *[f"pose_{c}" for c in "xyzabr"]]


def _view_folder(view: str) -> str:
    if view == "View5":
        return "View5"
    number, _, side = view.partition("_")
    return f"{number}/{side}"


class SessionRecorder:
    def __init__(self, root: str | Path, start: float | None = None):
        self.stamp = time.strftime("%Y%m%d_%H%M%S", time.gmtime(start or time.time()))
        self.path = Path(root) / f"recv_all_{self.stamp}"
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._csv = open(self.path / f"robot_state_{self.stamp}.csv", "w")
        self._csv.write(",".join(_CSV_COLUMNS) + "\n")
        self._part_path = self.path / "sensor_data.part"
        self._part = open(self._part_path, "wb")
        self.counts = {"robot": 0, "frames": 0, "sensor": 0}
        self.first_sensor_ts: float | None = None
        self.closed = False

    # hooks called by the receivers (each from its own thread)
    def robot(self, recv: float, s: wire.RobotSample) -> None:
        row = [recv, s.origin_ts, s.send_ts, s.force, *s.joints, *s.pose]
        with self._lock:
            if not self.closed:
                self._csv.write(",".join(repr(float(v)) for v in row) + "\n")
                self.counts["robot"] += 1

    def frame(self, view: str, f: wire.CameraFrame) -> None:
        folder = self.path / _view_folder(view)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{f.camera}_{f.timestamp:.3f}.jpg").write_bytes(f.jpeg)
        self.counts["frames"] += 1

    def sensor(self, rec: np.ndarray) -> None:
        with self._lock:
            if not self.closed:
                if self.first_sensor_ts is None:
                    self.first_sensor_ts = float(rec["ts"][0])
                self._part.write(np.ascontiguousarray(rec).tobytes())
                self.counts["sensor"] += len(rec)

    def close(self, clock_offsets: dict | None = None) -> Path:
        with self._lock:
            if self.closed:
                return self.path
            self.closed = True
            self._csv.close()
            self._part.close()
        if self.counts["sensor"]:
            rec = np.memmap(self._part_path, wire.SENSOR_DTYPE, mode="r")
            npz = self.path / f"sensor_data_{self.stamp}_{int(self.first_sensor_ts)}.npz"
            with zipfile.ZipFile(npz, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
                for key, field in (("timestamps", "ts"), ("send_timestamps", "send_ts"), ("forces", "force"),
                                   ("alines", "aline")):
                    with zf.open(f"{key}.npy", "w", force_zip64=True) as f:
                        np.lib.format.write_array(f, rec[field], allow_pickle=False)
            del rec
        self._part_path.unlink()
        if clock_offsets:
            (self.path / "clock_offsets.json").write_text(json.dumps(clock_offsets, indent=1))
        return self.path
