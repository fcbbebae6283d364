"""Alignment against the synthetic recorder's exact trajectory."""
import numpy as np
import pytest

from vla_lib.data.recorder_formats import read_session
from vla_lib.data.samples import SampleDataset, build_index
from vla_lib.data.synthetic import load_truth, true_pose_unwrapped
from vla_lib.data.timeline import resample_sensor_window, wrap_deg


@pytest.fixture
def index(data_cfg):
    return build_index(data_cfg)


def test_targets_equal_analytic_deltas(index, data_cfg):
    for sid, session in index.sessions.items():
        spec = load_truth(session.path)
        rows = np.flatnonzero(index.table.session_id == sid)
        t = index.table.t.to_numpy()[rows]
        times = t[:, None] + data_cfg.action_dt_s * np.arange(data_cfg.horizon + 1)[None, :]
        exact = np.stack([true_pose_unwrapped(spec, row) for row in times])  # (N, H+1, 6)
        truth = np.diff(exact, axis=1)
        truth[..., 3:] = wrap_deg(truth[..., 3:])
        got = index.targets[rows]
        # robot stamps are rounded to 1 ms and linearly interpolated: allow a small tolerance
        np.testing.assert_allclose(got[..., :6], truth, atol=0.02)
        assert (got[..., 6] == data_cfg.gripper_value).all()


def test_angle_wrap_across_180(index):
    r_steps = index.targets[..., 5]
    assert np.abs(r_steps).max() < 5, "a 100 ms dr must never look like a +-360 jump"
    crossed = False
    for session in index.sessions.values():
        r = session.pose[:, 5]
        crossed |= bool((r > 170).any() and (r < -170).any())
    assert crossed, "the synthetic trajectories are meant to cross +-180"


def test_no_frame_from_the_future(index):
    for v, view in enumerate(index.views):
        stale = index.table[f"staleness_{view}"].to_numpy()
        present = index.frame_index[:, v] >= 0
        assert (stale[present] >= 0).all()
        assert np.isnan(stale[~present]).all()
    # and the latest one: the next frame (if any) is after t
    for i in range(0, len(index), 7):
        session = index.sessions[index.table.session_id[i]]
        t = index.table.t[i]
        for v, view in enumerate(index.views):
            j = index.frame_index[i, v]
            ft = session.frames[view].times + session.camera_offset()
            if j + 1 < len(ft):
                assert ft[j + 1] > t


def test_sensor_window_covers_exactly_the_last_100ms(index, data_cfg):
    ds = SampleDataset(index, data_cfg)
    sid = next(s for s in index.sessions if index.sessions[s].has_sensor)
    session = index.sessions[sid]
    times = session.sensor.times + session.sensor_offset()
    for i in np.flatnonzero(index.table.session_id == sid)[::5]:
        t = index.table.t[i]
        _, valid, (lo, hi) = resample_sensor_window(times, session.sensor.forces, session.sensor.alines, t,
                                                    0.1, 65, data_cfg.sensor_max_gap_s)
        assert times[lo] > t - 0.1 and times[hi - 1] <= t
        assert lo == 0 or times[lo - 1] <= t - 0.1
        assert hi == len(times) or times[hi] > t
        window, mask = ds.sensor_window(sid, t)[0], ds.sensor_window(sid, t)[1]
        # the last grid point is at t: its force equals the interpolation of the raw samples around t
        if mask[-1]:
            expected = np.interp(t, times[lo:hi], np.asarray(session.sensor.forces[lo:hi]))
            assert window[-1, 0] == pytest.approx(expected, abs=1e-4)


def test_sensor_gaps_and_nan_rows_are_masked_not_zero_data():
    times = np.arange(0, 0.2, 1 / 650)
    forces = np.full(len(times), -3.0, np.float32)
    alines = np.ones((len(times), 1025), np.float32)
    keep = ~((times > 0.13) & (times < 0.16))  # a 30 ms gap
    forces[5] = np.nan
    window, valid, _ = resample_sensor_window(times[keep], forces[keep], alines[keep], 0.2, 0.1, 65, 0.006)
    assert not valid.all() and valid.any()
    assert (window[valid, 0] == -3.0).all(), "valid points carry data"
    assert (window[~valid] == 0).all()


def test_no_sensor_sessions_flagged(index, data_cfg):
    ds = SampleDataset(index, data_cfg)
    i = int(np.flatnonzero(~index.table.has_sensor.to_numpy())[0])
    item = ds[i]
    assert item["has_sensor"] is False and not item["sensor_mask"].any()
    j = int(np.flatnonzero(index.table.has_sensor.to_numpy())[3])
    assert ds[j]["has_sensor"] and ds[j]["sensor_mask"].mean() > 0.5


def test_cache_keys_stable_and_shared(index, data_cfg):
    again = build_index(data_cfg)
    assert (again.table.cache_key == index.table.cache_key).all()
    # 10 Hz anchors over ~2 Hz frames: many samples share one VL input
    assert index.table.cache_key.nunique() < 0.7 * len(index)


def test_chunk_past_end_pad_keeps_masked_steps(data_cfg):
    dropped = build_index(data_cfg)
    data_cfg.chunk_past_end = "pad"
    padded = build_index(data_cfg)
    assert len(padded) > len(dropped) and dropped.target_mask.all()
    assert not padded.target_mask.all()
    assert (padded.targets[~padded.target_mask][:, :6] == 0).all()


def test_index_of_many_sessions_is_fast(tmp_path):
    """Not a timing assertion: builds a bigger index to check it scales (benchmarks/ prints the figure)."""
    from tests.conftest import small_synthetic
    from vla_lib.config import RunConfig
    from vla_lib.data.synthetic import generate_dataset

    generate_dataset(small_synthetic(tmp_path, num_sensor_sessions=3, num_nosensor_sessions=0, duration_s=8,
                                     image_width=64, image_height=36))
    cfg = RunConfig().data
    cfg.root = str(tmp_path)
    assert len(build_index(cfg).sessions) == 3
