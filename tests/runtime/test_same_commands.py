"""The simulated and the live path execute the same commands from the same observations: a closed-loop episode on
the simulated rig is recorded (what the loop saw at each tick), then served again to the same loop with the live
actuator (ZMQ PUB on loopback, `--send-actions`); what a subscriber receives is what the simulated arm executed."""
import numpy as np
import zmq

from vla_lib.config import RunConfig
from vla_lib.data.scenarios import PREROLL_S, ReactiveDemonstrator, sample_episode
from vla_lib.evaluation.closed_loop import ControllerPolicy
from vla_lib.rig import wire
from vla_lib.runtime.actuators import ActionPublisher
from vla_lib.runtime.loop import Runtime, run_loop
from vla_lib.sim.rig import SimClock, SimRig


class Recorder:
    """The rig, with what the loop reads of it kept per robot-clock time."""

    def __init__(self, rig):
        self.rig, self.seen = rig, {}

    def __getattr__(self, name):
        return getattr(self.rig, name)

    def _keep(self, key, value):
        self.seen.setdefault(round(self.rig.now(), 6), {})[key] = value
        return value

    def views(self):
        return self._keep("views", (None, self.rig.views()[1], self.rig.views()[2]))

    def sensor_window(self):
        return self._keep("window", self.rig.sensor_window())

    def robot_pose(self):
        return self._keep("pose", self.rig.robot_pose())

    def stream_ages(self):
        return self._keep("ages", self.rig.stream_ages())


class Served:
    """A RobotIO that serves recorded observations at their times, with the live actuator."""

    def __init__(self, seen, actuator):
        self.seen, self.actuator, self.clock = seen, actuator, SimClock(PREROLL_S)

    def _at(self, key):
        return self.seen[round(self.clock.now(), 6)][key]

    def begin(self):
        pass

    def now(self):
        return self.clock.now()

    def views(self):
        return [None], *self._at("views")[1:]

    def sensor_window(self):
        return self._at("window")

    def robot_pose(self):
        return self._at("pose")

    def stream_ages(self):
        return self._at("ages")

    def pose_history(self, steps):
        return np.zeros((steps, 6))

    def attach_guard(self, guard):
        pass


def test_simulated_and_live_paths_send_the_same_commands(live_cfg):
    cfg = RunConfig.from_dict({"synthetic": {"scenario": "sensor_task", "image_width": 160, "image_height": 90},
                               "data": {"views": ["View1_left"]}, "runtime": {"limits": {"max_speed_mm_s": 3.0}}})
    task = cfg.synthetic.task
    rig = SimRig(sample_episode(task, 1003), cfg.synthetic, views=cfg.data.views, data_cfg=cfg.data)
    rec = Recorder(rig)
    rig.clock.sleep_until(PREROLL_S)
    run_loop(ControllerPolicy(ReactiveDemonstrator(task), rec), rec, Runtime.from_config(cfg, rig), "", 3.0,
             clock=rig.clock)
    sim = rig.executed
    assert len(sim) == 30 and any("step_mm" in c.reasons for c in sim)  # the speed limit was at work

    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, wire.ACTION_TOPIC)
    sub.connect(live_cfg.action_endpoint)
    pub = ActionPublisher(live_cfg.action_endpoint, send=True)
    try:
        for _ in range(200):  # PUB/SUB joins late: a bounded handshake before the run
            pub._sock.send_multipart(wire.pack_action(-1.0, 0.0, np.zeros(6), np.zeros(6)))
            if sub.poll(10):
                break
        while sub.poll(50):
            sub.recv_multipart()
        served = Served(rec.seen, pub)
        run_loop(ControllerPolicy(ReactiveDemonstrator(task), served), served, Runtime.from_config(cfg, pub), "",
                 3.0, clock=served.clock)
        got = []
        while len(got) < len(sim) and sub.poll(1000):
            got.append(wire.unpack_action(sub.recv_multipart()))
    finally:
        pub.close()
        sub.close(linger=0)
    assert len(got) == len(sim)
    for (t, _, delta, target), cmd in zip(got, sim):  # the wire carries float32
        assert t == cmd.t
        np.testing.assert_allclose(delta, cmd.delta, atol=1e-5)
        np.testing.assert_allclose(target, cmd.target, atol=1e-3)
