"""Sensor-window augmentation: each augmentation does what its keys say, a window stays a SensorWindow (invalid points
0 and masked), the generator is (seed, epoch, index) alone, and only the training split augments."""
from dataclasses import replace

import numpy as np
import pytest
import torch

from vla_lib.config import ConfigError, RunConfig
from vla_lib.data.augment import TrainingAugmentation, augment_window, training_augmentation
from vla_lib.data.configuration_augment import AugmentConfig
from vla_lib.data.samples import SampleDataset, build_index

NONE = AugmentConfig(enabled=True, **{k: 0.0 for k in AugmentConfig().chances()})


def only(name: str, **sizes) -> AugmentConfig:
    """The config that applies augmentation `name` (its `<name>_p` = 1) and no other."""
    return replace(NONE, **{f"{name}_p": 1.0}, **sizes)


@pytest.fixture
def window():
    """A recorded-looking window: force -3 N, background 40 + noise, a surface reflection at depth 200, three
    points without a sample."""
    rng = np.random.default_rng(0)
    values = np.full((65, 1026), 40.0, np.float32) + rng.normal(0, 5, (65, 1026)).astype(np.float32)
    values[:, 0] = -3.0
    values[:, 1:] += 800 * np.exp(-0.5 * ((np.arange(1025) - 200) / 6.0) ** 2).astype(np.float32)
    valid = np.ones(65, bool)
    valid[[10, 11, 40]] = False
    values[~valid] = 0.0
    return values, valid


def _run(window, cfg, seed=0):
    values, valid = window
    before = values.copy(), valid.copy()
    out = augment_window(values, valid, cfg, np.random.default_rng(seed))
    assert (values == before[0]).all() and (valid == before[1]).all(), "the input window was changed in place"
    assert out[0].dtype == np.float32 and out[0].shape == values.shape and out[1].dtype == bool
    assert (out[0][~out[1]] == 0).all(), "an invalid point must be 0 and masked"
    return out


def test_nothing_chosen_changes_nothing(window):
    values, valid = _run(window, NONE)
    assert (values == window[0]).all() and (valid == window[1]).all()


@pytest.mark.parametrize("seed", range(5))
def test_gain_scales_the_aline_by_one_factor(window, seed):
    values, valid = _run(window, only("gain", gain=0.3), seed)
    ratio = values[valid, 1:] / window[0][valid, 1:]
    assert np.ptp(ratio) < 1e-5 and 1 / 1.3 - 1e-6 <= ratio[0, 0] <= 1.3 + 1e-6 and abs(ratio[0, 0] - 1) > 1e-4
    assert (values[:, 0] == window[0][:, 0]).all() and (valid == window[1]).all()


@pytest.mark.parametrize("name, column, size", [("aline_offset", slice(1, None), 10.0),
                                                 ("force_offset", slice(0, 1), 0.05)])
def test_offsets_shift_one_channel_of_valid_points(window, name, column, size):
    key = "force_offset_n" if name == "force_offset" else name
    values, valid = _run(window, only(name, **{key: size}))
    diff = values[valid] - window[0][valid]
    other = np.ones(1026, bool)
    other[column] = False
    assert (diff[:, other] == 0).all() and np.ptp(diff[:, column]) < 1e-4
    assert 0 < abs(diff[0, column][0]) <= size + 1e-5


def test_reflections_are_static_peaks_below_the_surface_reflection(window):
    values, valid = _run(window, only("reflection", reflections_max=3, reflection_amplitude=[0.1, 0.3]))
    added = values[valid, 1:] - window[0][valid, 1:]
    assert np.ptp(added, axis=0).max() < 1e-3, "the same reflection in every row"
    profile = added[0]
    mean = window[0][valid, 1:].mean(0)
    height = mean.max() - np.median(mean)
    assert profile.min() >= 0 and 0.1 * height * 0.5 < profile.max() <= 3 * 0.3 * height
    assert (abs(values[valid, 1:].argmax(1) - 200) <= 2).all(), "the surface stays the strongest reflection"
    assert (values[:, 0] == window[0][:, 0]).all()


def test_speckle_multiplies_each_aline_point(window):
    values, valid = _run(window, only("speckle", speckle_std=0.1))
    ratio = values[valid, 1:] / window[0][valid, 1:]
    assert 0.05 < ratio.std() < 0.15 and abs(ratio.mean() - 1) < 0.01 and (ratio >= 0).all()
    assert (values[:, 0] == window[0][:, 0]).all()


def test_dropped_points_scattered_and_in_a_burst(window):
    values, valid = _run(window, only("drop", drop_fraction=0.3))
    lost = window[1] & ~valid
    assert 5 < lost.sum() < 35 and not (valid & ~window[1]).any()
    assert (values[valid] == window[0][valid]).all()
    values, valid = _run(window, only("burst", burst_max=10))
    lost = np.flatnonzero(window[1] & ~valid)
    assert len(lost) and np.ptp(lost) < 10  # one run of consecutive points (around those already missing)
    assert (values[valid] == window[0][valid]).all()


def test_dropped_sensor_is_a_window_without_sensor(window):
    values, valid = _run(window, only("drop_sensor"))
    assert not valid.any() and not values.any()


@pytest.mark.parametrize("seed", range(6))
def test_time_shift_rolls_and_invalidates_the_wrapped_points(window, seed):
    values, valid = _run(window, only("shift", shift_max=3), seed)
    shifts = [s for s in range(-3, 4) if s and (np.roll(window[0], s, 0)[valid] == values[valid]).all()]
    assert len(shifts) == 1
    s = shifts[0]
    wrapped = np.zeros(65, bool)
    if s > 0:
        wrapped[:s] = True
    else:
        wrapped[s:] = True
    assert (valid == (np.roll(window[1], s) & ~wrapped)).all()


def test_everything_at_once_keeps_the_window_a_sensor_window(window):
    every = replace(AugmentConfig(enabled=True), **{k: 1.0 for k in AugmentConfig().chances() if k != "drop_sensor_p"})
    values, valid = _run(window, every)
    assert valid.sum() < window[1].sum() and np.isfinite(values).all()
    empty = (np.zeros_like(window[0]), np.zeros(65, bool))  # a session without sensor stays one
    values, valid = _run(empty, every)
    assert not valid.any() and not values.any()


def test_generator_is_seed_epoch_and_index_alone(window):
    aug = TrainingAugmentation(AugmentConfig(enabled=True), seed=7)
    first = aug(*window, 3)
    np.random.seed(123), torch.manual_seed(123)  # the global generators play no part
    again = TrainingAugmentation(AugmentConfig(enabled=True), seed=7)(*window, 3)
    assert all((a == b).all() for a, b in zip(first, again))
    others = [aug(*window, 4)]
    aug.set_epoch(1)
    others.append(aug(*window, 3))
    others.append(TrainingAugmentation(AugmentConfig(enabled=True), seed=8)(*window, 3))
    for other in others:
        assert not (other[0] == first[0]).all()


def test_loader_workers_see_the_epoch_set_before_each_iteration(window):
    """The workers live for the whole run (persistent): the epoch set in this process reaches them."""
    aug = TrainingAugmentation(AugmentConfig(enabled=True), seed=0)

    class Windows(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return aug(*window, i)[0]

    loader = torch.utils.data.DataLoader(Windows(), batch_size=4, num_workers=1, persistent_workers=True)
    for epoch in (0, 1, 2):
        aug.set_epoch(epoch)
        [batch] = list(loader)
        expected = [augment_window(*window, aug.cfg, np.random.default_rng([0, epoch, i, 0x5E45]))[0] for i in range(4)]
        assert (batch.numpy() == np.stack(expected)).all(), epoch


def test_config_section_checks_and_round_trip():
    cfg = RunConfig.from_dict({"augment": {"enabled": True, "gain": 0.2}})
    assert cfg.to_dict()["augment"]["gain"] == 0.2 and RunConfig.from_dict(cfg.to_dict()).augment == cfg.augment
    assert not RunConfig().augment.enabled and training_augmentation(RunConfig()) is None
    for bad in ({"gain_p": 1.5}, {"gain": -0.1}, {"reflection_amplitude": [0.3, 0.1]}, {"drop_fraction": 1.0},
                {"reflection_sigma": 0}, {"unknown": 1}):
        with pytest.raises(ConfigError, match="augment"):
            RunConfig.from_dict({"augment": bad})
    with pytest.raises(ConfigError, match="sensor_window_size"):
        RunConfig.from_dict({"augment": {"enabled": True, "shift_max": 8}, "data": {"sensor_window_size": 8}})
    RunConfig.from_dict({"augment": {"shift_max": 8}, "data": {"sensor_window_size": 8}})  # off: not checked


def test_only_an_enabled_training_dataset_augments(data_cfg):
    index = build_index(data_cfg)
    plain = SampleDataset(index, data_cfg)
    off = SampleDataset(index, data_cfg, training_augmentation(RunConfig()))
    on = SampleDataset(index, data_cfg, training_augmentation(RunConfig.from_dict({"augment": {"enabled": True}})))
    rows = [i for i in range(0, len(index), 5) if index.table.has_sensor[i]]
    changed = 0
    for i in rows:
        a, b, c = plain[i], off[i], on[i]
        assert all((np.asarray(a[k]) == np.asarray(b[k])).all() for k in a), "off must be bit-identical"
        assert (c["sensor"][~c["sensor_mask"]] == 0).all() and c["has_sensor"] == bool(c["sensor_mask"].any())
        changed += not (a["sensor"] == c["sensor"]).all()
        assert all((np.asarray(a[k]) == np.asarray(c[k])).all() for k in a if not k.startswith("sensor")
                   and k != "has_sensor")
    assert changed > len(rows) // 2
