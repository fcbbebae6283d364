"""The contact memory: where the force began, the same in training samples and in the runtime's ticks."""
import numpy as np
import pytest

from vla_lib.config import RunConfig
from vla_lib.data.contact import ContactMemory
from vla_lib.data.recorder_formats import read_session
from vla_lib.data.scenarios import load_episode, sensor_task_groups
from vla_lib.data.timeline import SensorWindow


@pytest.fixture(scope="module")
def task_index(tmp_path_factory):
    from vla_lib.data.samples import build_index
    from vla_lib.sim.demonstrations import write_dataset

    root = tmp_path_factory.mktemp("contact")
    cfg = RunConfig.from_dict({"synthetic": {"scenario": "sensor_task", "out_dir": str(root),
                                             "num_sensor_sessions": 2, "num_nosensor_sessions": 1,
                                             "image_width": 64, "image_height": 36, "seed": 6,
                                             "task": {"sensor_model": {"preset": "rich"}}},
                               "data": {"root": str(root), "groups": sensor_task_groups()}})
    made = write_dataset(cfg.synthetic)
    return cfg, build_index(cfg.data), made


def test_memory_holds_the_depth_below_where_the_force_began(task_index):
    """On the rich tissue model (films, layers, force bias and drift): no contact above the surface, contact once
    the tip is 0.2 mm in, and from then on the displacement since the onset is the depth below the target surface
    (within what 100 ms of descent and the demonstrator's command noise allow)."""
    cfg, index, made = task_index
    for path in made[:2]:
        ep, session = load_episode(path), read_session(path)
        rows = np.flatnonzero(index.table.session_id.str.endswith(session.session_id).to_numpy())
        t = index.table.t.to_numpy()[rows]
        depth = ep.surface_z - np.interp(t, session.robot_times, session.pose[:, 2])
        memory = index.contact[rows]
        assert (memory[depth < -0.1] == 0).all()
        assert (memory[depth > 0.2, 0] == 1).all() and (depth > 1.0).sum() > 10
        touching = memory[:, 0] == 1
        np.testing.assert_allclose(-memory[touching, 3], depth[touching], atol=0.2)
        np.testing.assert_allclose(memory[touching, 1:3], 0.0, atol=0.05)  # the task moves along z
    assert (index.contact[~index.table.has_sensor.to_numpy()] == 0).all()


def test_training_samples_equal_the_runtime_ticks(task_index):
    """The runtime's ContactMemory, fed the replayed session's windows (force + A-line) and latest pose at each
    anchor, gives what the sample index holds."""
    from vla_lib.runtime.replay_io import ReplayIO

    cfg, index, _ = task_index
    sid = next(s for s, sess in index.sessions.items() if sess.has_sensor)
    session, rows = index.sessions[sid], np.flatnonzero(index.table.session_id.to_numpy() == sid)
    replay, memory = ReplayIO(session, cfg.data), ContactMemory(cfg.data.anchor_stride_s)
    for i in rows:
        t = float(index.table.t[i])
        last = np.searchsorted(session.robot_times, t, side="right") - 1
        np.testing.assert_array_equal(memory.update(replay.sensor_window_at(t), session.pose[last]),
                                      index.contact[i])
    assert index.contact[rows, 0].any()


def test_memory_without_sensor_or_pose():
    memory = ContactMemory(0.1)
    free, touch = np.full((65, 2), -3.0, np.float32), np.full((65, 2), -2.5, np.float32)
    valid = np.ones(65, bool)
    pose = np.array([0.0, 0.0, 10.0, 0, 0, 0])
    assert not memory.update(None, pose).any() and not memory.update(SensorWindow(free, valid), pose).any()
    assert not memory.update(SensorWindow(touch, ~valid), pose).any()  # no valid point: nothing new
    assert not memory.update(SensorWindow(touch, valid), None).any()  # in contact, but no pose yet: no origin
    out = memory.update(SensorWindow(touch, valid), pose)  # the origin is the first finite pose in contact
    np.testing.assert_array_equal(out, [1, 0, 0, 0])
    np.testing.assert_allclose(memory.update(SensorWindow(free, valid), pose - [0, 0, 1.5, 0, 0, 0]),
                               [1, 0, 0, -1.5])  # latched: backing off keeps the surface where it was met


def test_a_sensor_offset_is_no_contact_for_the_memory():
    """A real sensor whose free-air reading is -2 N (not the simulated -3 N): no contact until the force rises."""
    memory, valid, pose = ContactMemory(0.1), np.ones(65, bool), np.zeros(6)
    for force in (-2.0, -2.0, -2.01, -1.99):
        assert not memory.update(SensorWindow(np.full((65, 2), force, np.float32), valid), pose).any()
    assert memory.update(SensorWindow(np.full((65, 2), -1.9, np.float32), valid), pose)[0] == 1.0


def test_a_slow_push_is_found_not_absorbed_as_drift():
    """0.3 N/mm tissue pushed at 0.1 mm/s (0.03 N/s): followed without a rate bound, the baseline took the rising
    force for drift and contact was never found; bounded at a sensor's drift rate, it is found within 0.5 mm."""
    memory, valid = ContactMemory(0.1), np.ones(65, bool)
    found = None
    for d in np.concatenate([np.full(10, -0.3), -0.3 + 0.01 * np.arange(1, 300)]):
        window = SensorWindow(np.full((65, 2), -3.0 + 0.3 * max(d, 0.0), np.float32), valid)
        if memory.update(window, np.array([0, 0, -d, 0, 0, 0]))[0] and found is None:
            found = d
    assert found is not None and found < 0.5, found


def test_a_withdrawal_ends_the_memory_and_the_next_contact_is_a_new_insertion():
    """Contact at z = 0, withdrawn 3 mm into free air (a stop and release, a replay that starts again): the memory
    reads "not in contact" again, and the next contact, at z = -1, is its new origin."""
    memory, valid = ContactMemory(0.1), np.ones(65, bool)
    free, touch = np.full((65, 2), -3.0, np.float32), np.full((65, 2), -2.9, np.float32)
    at = lambda z: np.array([0.0, 0.0, z, 0, 0, 0])  # noqa: E731
    memory.update(SensorWindow(free, valid), at(5.0))
    assert memory.update(SensorWindow(touch, valid), at(0.0))[0] == 1
    np.testing.assert_allclose(memory.update(SensorWindow(free, valid), at(1.0)), [1, 0, 0, 1])  # backing off: kept
    assert not memory.update(SensorWindow(free, valid), at(3.0)).any()
    np.testing.assert_allclose(memory.update(SensorWindow(touch, valid), at(-1.0)), [1, 0, 0, 0])
    np.testing.assert_allclose(memory.update(SensorWindow(touch, valid), at(-1.5)), [1, 0, 0, -0.5])
