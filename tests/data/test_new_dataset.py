"""The recorder's third layout, `New_dataset` episodes (docs/data.md): the overlapping sensor windows are
rebuilt into one stream (every sample once, in order), frames are read from images/ViewN/<ts>.jpg, and the episode
feeds the sample index like the other layouts."""
import json

import numpy as np
import pytest

from vla_lib.config import GroupConfig, RunConfig, SyntheticConfig
from vla_lib.data.recorder_files import DataError
from vla_lib.data.recorder_formats import read_session
from vla_lib.data.samples import SampleDataset, build_index
from vla_lib.data.synthetic import _make_spec, write_new_dataset_episode


@pytest.fixture(scope="module")
def episode(tmp_path_factory):
    root = tmp_path_factory.mktemp("new_dataset") / "New_dataset" / "Eye"
    rng = np.random.default_rng(7)
    cfg = SyntheticConfig(duration_s=4.0, image_width=160, image_height=90)
    return write_new_dataset_episode(root, _make_spec(rng, 1761590000.0, 4.0, 1), cfg, rng)


def test_episode_reads_with_its_sensor_stream_rebuilt(episode):
    s = read_session(episode)
    assert s.layout == "new_dataset" and s.has_sensor and len(s.robot_times) == 400
    assert [len(s.frames[f"View{i}_left"].times) for i in range(1, 5)] == [8] * 4 and len(s.frames["View5"].times) == 8
    assert all(len(s.frames[f"View{i}_right"].times) == 0 for i in range(1, 5))
    truth = np.load(episode / "synthetic_sensor_truth.npz")
    n = len(s.sensor.times)
    meta = json.loads((episode / "metadata.json").read_text())
    windows = np.load(episode / "sensor_data.npz")["timestamps"]
    # every raw sample from the first window's start to the last window's end, once, in order
    assert n == int(np.searchsorted(truth["timestamps"], windows[-1], side="right")) and meta["sensor_windows_count"] > 5
    np.testing.assert_array_equal(s.sensor.forces, truth["forces"][:n])
    np.testing.assert_array_equal(np.asarray(s.sensor.alines), truth["alines"][:n])
    np.testing.assert_array_equal(s.sensor.alines[10:12], truth["alines"][10:12])
    # per-sample stamps were never saved: rebuilt between window stamps (exact at each window's last sample)
    err = np.abs(s.sensor.times - truth["timestamps"][:n])
    ends = np.searchsorted(truth["timestamps"][:n], windows)
    np.testing.assert_allclose(s.sensor.times[ends], windows, atol=1e-9)
    later = err[ends[0] + 1:]  # between two windows: spread evenly over 200 ms
    assert np.median(later) < 2e-3 and later.max() < 0.02
    assert err[:ends[0]].max() < 0.06  # the first window: back from its end at the effective rate (drops inside)


def test_episode_feeds_the_sample_index(episode):
    cfg = RunConfig().data
    cfg.root = str(episode.parents[2])
    cfg.groups = [GroupConfig("New_dataset", "New_dataset/*/episode_*", "Perform Eye insertion task")]
    index = build_index(cfg)
    assert len(index) > 10 and index.table.has_sensor.all()
    item = SampleDataset(index, cfg)[len(index) // 2]
    assert item["sensor"].shape == (65, 1026) and item["sensor_mask"].mean() > 0.8 and item["has_sensor"]


def test_broken_episode_sensor_is_named(episode, tmp_path):
    import shutil

    bad = tmp_path / episode.name
    shutil.copytree(episode, bad)
    np.savez(bad / "sensor_data.npz", timestamps=np.arange(3.0), data=np.zeros((3, 650, 100), np.float32))
    with pytest.raises(DataError, match="sensor_data.npz"):
        read_session(bad)
