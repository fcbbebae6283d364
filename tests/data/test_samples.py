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
        window, mask = ds.sensor_window(sid, t)
        # the last grid point is at t: its force equals the interpolation of the raw samples around t
        assert mask[-1], "the synthetic sensor streams without gaps at the anchors checked here"
        expected = np.interp(t, times[lo:hi], np.asarray(session.sensor.forces[lo:hi]))
        assert window[-1, 0] == pytest.approx(expected, abs=1e-4)


def test_sensor_gaps_and_nan_rows_are_masked_not_zero_data():
    times = np.arange(0, 0.2, 1 / 650)
    forces = np.full(len(times), -3.0, np.float32)
    alines = np.ones((len(times), 1025), np.float32)
    keep = ~((times > 0.13) & (times < 0.16))  # a 30 ms gap
    forces[105:115] = np.nan  # 15 ms of NaN rows at 0.162-0.177 s, inside the window (0.1, 0.2]
    window, valid, _ = resample_sensor_window(times[keep], forces[keep], alines[keep], 0.2, 0.1, 65, 0.006)
    grid = 0.1 + 0.1 * np.arange(1, 66) / 65
    assert not valid[(grid > 0.137) & (grid < 0.153)].any(), "the gap is masked"
    assert not valid[np.argmin(np.abs(grid - 0.1685))], "a grid point amid NaN rows is masked, not interpolated"
    assert valid[(grid > 0.18)].all() and valid[grid < 0.12].all()
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


def test_index_of_many_sessions_is_the_union_of_its_sessions(tmp_path):
    """A bigger index (benchmarks/ prints its build time): each session contributes exactly its anchors, every
    `anchor_stride_s` from its first usable time to the last anchor whose chunk fits."""
    from tests.conftest import small_synthetic
    from vla_lib.config import RunConfig
    from vla_lib.sim.demonstrations import write_dataset

    write_dataset(small_synthetic(tmp_path, num_sensor_sessions=3, num_nosensor_sessions=0, duration_s=8,
                                  image_width=64, image_height=36))
    cfg = RunConfig().data
    cfg.root = str(tmp_path)
    index = build_index(cfg)
    assert len(index.sessions) == 3
    for sid, session in index.sessions.items():
        t = index.table.t[index.table.session_id == sid].to_numpy()
        np.testing.assert_allclose(np.diff(t), cfg.anchor_stride_s, atol=2e-6)  # anchors are rounded to 1 us
        assert t[-1] + cfg.horizon * cfg.action_dt_s <= session.robot_times[-1] + 1e-6
        assert t[-1] + cfg.anchor_stride_s + cfg.horizon * cfg.action_dt_s > session.robot_times[-1]
        assert t[0] >= session.sensor.times[0] + session.sensor_offset() + cfg.sensor_window_s - 1e-6


def test_history_uses_only_robot_samples_at_or_before_t():
    """The history ends at the last robot sample <= t, never at an interpolation towards the next one, and
    each delta spans the full 100 ms."""
    from vla_lib.data.timeline import pose_history

    rt = np.arange(0.0, 1.0, 0.01)  # 100 Hz
    pose = np.zeros((len(rt), 6))
    pose[:, 0] = rt ** 2 * 100  # accelerating: interpolation towards the future sample would show
    t = 0.505  # between the samples at 0.50 and 0.51
    h = pose_history(rt, pose, [t], 2, 0.1)[0]
    known = rt <= t
    x = lambda tau: np.interp(tau, rt[known], pose[known, 0])  # noqa: E731
    end = rt[known][-1]  # 0.50
    np.testing.assert_allclose(h[:, 0], [x(end - 0.1) - x(end - 0.2), x(end) - x(end - 0.1)], atol=1e-4)
    assert h[-1, 0] == pytest.approx(pose[50, 0] - pose[40, 0], abs=1e-4)
    # changing every sample after t changes nothing
    future = pose.copy()
    future[~known, 0] += 1000
    np.testing.assert_array_equal(pose_history(rt, future, [t], 2, 0.1), pose_history(rt, pose, [t], 2, 0.1))


def test_small_but_real_std_keeps_its_scale():
    """A dimension with a small std is clamped to a floor, not replaced by 1.0."""
    from vla_lib.data.normalization import MIN_ACTION_STD, safe_std

    std = safe_std(np.array([0.5, 0.02, 1e-6, 0.0]), MIN_ACTION_STD)
    np.testing.assert_allclose(std, [0.5, 0.02, MIN_ACTION_STD, 1.0])


def test_missing_clock_offsets_are_reported_and_params_offsets_applied(session_copy, data_cfg):
    """No clock_offsets.json -> an issue in the audit (offset 0 said out loud); params offsets apply."""
    from vla_lib.data.audit import audit_dataset

    path = session_copy("recv_all")
    (path / "clock_offsets.json").unlink(missing_ok=True)
    s = read_session(path)
    assert s.offsets_source == "none" and any("no clock offsets" in why for _, why in s.issues)
    s = read_session(path, clock_offsets={"camera_s": 0.25, "sensor_s": -0.5})
    assert s.offsets_source == "params" and s.camera_offset() == 0.25 and s.sensor_offset() == -0.5
    assert not any("no clock offsets" in why for _, why in s.issues)
    data_cfg.root = str(path.parent.parent)
    data_cfg.clock_offsets = {path.name: {"camera_s": 0.25}}
    table, skipped, _ = audit_dataset(data_cfg)
    assert table.set_index("session").loc[path.name, "clock_offsets"] == "params"
    data_cfg.clock_offsets = {}
    table, skipped, _ = audit_dataset(data_cfg)
    assert any("no clock offsets" in s["reason"] for s in skipped)


def test_the_audit_report_is_strict_json(session_copy, data_cfg, tmp_path):
    """audit.json holds no NaN (JSON has none): a value with no data (a median of nothing) is null."""
    import json

    from vla_lib.data.audit import audit_dataset, write_audit

    data_cfg.root = str(session_copy("recv_all").parent.parent)
    table, skipped, _ = audit_dataset(data_cfg)
    path = write_audit(tmp_path, table, skipped, extra={"staleness_ms_median": np.float64("nan")})["path"]
    summary = json.loads(open(path).read(), parse_constant=lambda c: pytest.fail(f"{c} in audit.json"))
    assert summary["staleness_ms_median"] is None and summary["sessions"] == len(table) >= 1


def test_an_overwritten_frame_gets_a_new_cache_key(session_copy, data_cfg):
    """A frame is identified by path, size and mtime: a JPEG written again is encoded again."""
    import os

    path = session_copy("recv_all")
    data_cfg.root = str(path.parent.parent)
    before = build_index(data_cfg)
    frame = before.view_paths(0)[0]
    st = frame.stat()
    os.utime(frame, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    after = build_index(data_cfg)
    uses = np.array([frame in before.view_paths(i) for i in range(len(before))])
    assert (after.table.cache_key[uses] != before.table.cache_key[uses]).all()
    assert (after.table.cache_key[~uses] == before.table.cache_key[~uses]).all()
