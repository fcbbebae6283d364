"""Fixtures of the rig tests: a tiny synthetic dataset (short sessions, small images) and free loopback ports."""
import socket

import pytest

from vla_lib.data.recorder_formats import read_session
from vla_lib.sim.demonstrations import write_dataset
from tests.conftest import small_synthetic


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def live_cfg():
    """A LiveConfig on free loopback ports."""
    from vla_lib.config import LiveConfig

    return LiveConfig(robot_endpoint=f"tcp://127.0.0.1:{free_port()}",
                      camera_endpoint=f"tcp://127.0.0.1:{free_port()}",
                      sensor_endpoint=f"127.0.0.1:{free_port()}",
                      action_endpoint=f"tcp://127.0.0.1:{free_port()}")


@pytest.fixture(scope="session")
def rig_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("rig_sessions")
    write_dataset(small_synthetic(root, num_sensor_sessions=2, num_nosensor_sessions=1, duration_s=2.5,
                                  image_width=160, image_height=90, seed=5))
    return root


@pytest.fixture(scope="session")
def rig_session(rig_root):
    return read_session(sorted(rig_root.glob("*/recv_all_*"))[0])


def wait_for(predicate, timeout=5.0):
    """Poll (bounded) until predicate() is true; returns its last value."""
    import time

    end = time.time() + timeout
    while not predicate() and time.time() < end:
        time.sleep(0.01)
    return predicate()
