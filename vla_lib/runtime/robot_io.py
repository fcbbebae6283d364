"""`RobotIO`: what the control loop needs of a robot, simulated, replayed or live.

Three implementations: `vla_lib.sim.rig.SimRig` (the simulated rig on its own clock), `runtime.replay_io.ReplayIO`
(a recorded session served as if live) and `runtime.live_io.LiveRobotIO` (the rig's streams). Each carries its
`actuator`, the thing commands go to (the simulated arm, the ZMQ publisher or its dry-run log, a recording), and
feeds the sensor guard every sensor batch as it arrives (`attach_guard`)."""
from __future__ import annotations

from typing import Protocol

import numpy as np

from vla_lib.data.timeline import SensorWindow


class Actuator(Protocol):
    def apply(self, cmd) -> None: ...  # one tick's `runtime.executor.Command` (move / hold / stop)

    def stop(self, t_sample: float, reason: str) -> None: ...  # a latched stop, now (any thread)

    def release(self) -> None: ...  # the operator released the stop: move again


class RobotIO(Protocol):
    actuator: Actuator

    def begin(self) -> None: ...  # called once, right before the loop starts

    def now(self) -> float: ...  # robot-clock seconds

    def views(self) -> tuple[list, tuple, float]: ...  # (image per configured view or None, identity, capture time)

    def sensor_window(self) -> SensorWindow | None: ...  # on the fixed grid (data.timeline.SensorWindow); None: no sensor

    def pose_history(self, steps: int) -> np.ndarray: ...  # (steps, 6) last pose deltas, oldest first

    def robot_pose(self) -> np.ndarray | None: ...  # the newest measured pose (6,), None before the first sample

    def stream_ages(self) -> dict[str, float | None]: ...  # seconds since the newest robot / sensor / camera data

    def attach_guard(self, guard) -> None: ...  # call guard.check(times, forces, alines) on every sensor batch


class RecordingActuator:
    """Keeps every command (the replay, tests): nothing moves."""

    def __init__(self):
        self.commands: list = []
        self.stops: list[tuple[float, str]] = []

    def apply(self, cmd) -> None:
        self.commands.append(cmd)

    def stop(self, t_sample: float, reason: str) -> None:
        self.stops.append((t_sample, reason))

    def release(self) -> None:
        self.stops.append((None, "released"))
