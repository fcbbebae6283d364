import numpy as np
import pandas as pd
import pytest

from vla_lib.data.recorder_files import DataError, load_image
from vla_lib.data.recorder_formats import read_session
from vla_lib.data.samples import build_index


def test_reads_both_layouts(synth_root):
    recv = read_session(sorted(synth_root.glob("*/recv_all_*"))[0])
    assert recv.layout == "recv_all" and recv.has_sensor
    assert isinstance(recv.sensor.alines, np.memmap) and recv.sensor.alines.shape[1] == 1025
    assert len(recv.frames["View1_left"].times) > 5 and len(recv.frames["View5"].times) > 5
    assert np.all(np.diff(recv.frames["View1_left"].times) > 0)
    cap = read_session(sorted(synth_root.glob("OCT_insertion/Captures*"))[0])
    assert cap.layout == "captures" and not cap.has_sensor and len(cap.frames["View5"].times) > 5
    zed = read_session(sorted(synth_root.glob("part1/ZED_Captures_*"))[0])  # 'timestamp' column, no OAK view
    assert len(zed.frames["View5"].times) == 0
    assert any("view5_oak" in f and "masked" in r for f, r in zed.issues)


def test_corrupt_and_truncated_jpeg_are_skipped_and_reported(session_copy):
    s = session_copy()
    frames = sorted((s / "View1" / "left").glob("*.jpg"))
    frames[2].write_bytes(b"this is not a jpeg")
    frames[3].write_bytes(frames[3].read_bytes()[:500])  # truncated
    session = read_session(s)
    reported = {f: r for f, r in session.issues}
    assert "bad start marker" in reported[str(frames[2])]
    assert "truncated" in reported[str(frames[3])]
    assert frames[2] not in session.frames["View1_left"].paths
    with pytest.raises(DataError, match=frames[2].name):
        load_image(frames[2])


def test_truncated_npz_names_the_file(session_copy):
    s = session_copy()
    npz = next(s.glob("sensor_data_*.npz"))
    npz.write_bytes(npz.read_bytes()[: npz.stat().st_size // 2])
    with pytest.raises(DataError, match=npz.name):
        read_session(s)


def test_aline_of_wrong_length_is_an_error(session_copy):
    s = session_copy()
    npz = next(s.glob("sensor_data_*.npz"))
    d = dict(np.load(npz))
    d["alines"] = d["alines"][:, :1000]
    np.savez(npz, **d)
    with pytest.raises(DataError, match=r"alines.*1025"):
        read_session(s)


def test_nan_rows_dropped_and_reported(session_copy):
    s = session_copy()
    csv = next(s.glob("robot_state_*.csv"))
    df = pd.read_csv(csv)
    df.loc[[10, 11], "pose_x"] = np.nan
    df.to_csv(csv, index=False)
    session = read_session(s)
    assert len(session.robot_times) == len(df) - 2
    assert any("2 row(s) with NaN" in r for _, r in session.issues)


def test_non_monotonic_timestamps_are_an_error(session_copy):
    s = session_copy("captures")
    csv = next(s.glob("robot_rt_*.csv"))
    df = pd.read_csv(csv)
    df.loc[50, "epoch_s"] = df.loc[10, "epoch_s"]
    df.to_csv(csv, index=False)
    with pytest.raises(DataError, match=rf"{csv.name}.*not increasing at row 50"):
        read_session(s)


def test_empty_session_and_missing_view(session_copy, data_cfg, tmp_path):
    empty = tmp_path / "White_silicone_white_circle" / "recv_all_20990101_000000"
    empty.mkdir(parents=True)
    with pytest.raises(DataError, match="robot_state"):
        read_session(empty)
    s = session_copy()  # lands under tmp_path/<group>/recv_all_...
    import shutil
    shutil.rmtree(s / "View2" / "left")
    data_cfg.root = str(tmp_path)
    index = build_index(data_cfg)
    assert [k["session"] for k in index.skipped] == ["White_silicone_white_circle/recv_all_20990101_000000"]
    v = data_cfg.views.index("View2_left")
    assert (index.frame_index[:, v] == -1).all()  # masked slot, same sample shape
    assert index.frame_index.shape[1] == len(data_cfg.views)
