"""Evaluation uses exactly the held-out sessions recorded at training time, never a new draw."""
import shutil

import pytest

from vla_lib.config import ConfigError, RunConfig
from vla_lib.data.normalization import compute_stats
from vla_lib.data.recorder_files import DataError
from vla_lib.data.samples import build_index
from vla_lib.data.split import split_sessions
from vla_lib.evaluation.run import held_out, split
from vla_lib.policy.checkpoint import CheckpointMismatchError
from vla_lib.policy.checkpoint import save_checkpoint
from vla_lib.models.modeling_policy import Stage1Policy
from vla_lib.vlm.cache_build import open_store


@pytest.fixture
def recorded(synth_root, tmp_path):
    """A copy of the sessions and a checkpoint that records the split it was trained with."""
    root = tmp_path / "sessions"
    shutil.copytree(synth_root, root)
    cfg = RunConfig.from_yaml("params/ci.yaml")
    cfg.data.root = str(root)
    index = build_index(cfg.data)
    train_ids, val_ids = split_sessions(index, cfg.data)
    cfg.model.vl_dim = 16
    stats = compute_stats(index.subset(train_ids))
    heads = Stage1Policy(cfg.model, *stats.action_arrays(), *stats.sensor_arrays())
    cfg.eval.checkpoint = str(tmp_path / "heads.pt")
    cfg.backbone.tiny_model_dir = str(tmp_path / "tiny")
    parts = open_store(cfg, create=False).parts
    save_checkpoint(cfg.eval.checkpoint, heads, stats, cfg, 1, 1, 0.0, {"train": train_ids, "val": val_ids},
                    {"fingerprint": "f", "parts": parts})
    return cfg, train_ids, val_ids


def test_evaluation_uses_the_recorded_validation_sessions(recorded):
    cfg, train_ids, val_ids = recorded
    assert split(cfg)[1] == sorted(val_ids)
    cfg.data.split_seed, cfg.data.val_fraction = 7, 0.25  # an edited params file: the draw would change
    assert split_sessions(build_index(cfg.data), cfg.data)[1] != sorted(val_ids)
    assert split(cfg)[1] == sorted(val_ids)
    # a training session removed from disk (or unreadable now) does not move sessions either
    victim = build_index(cfg.data).sessions[train_ids[0]].path
    shutil.rmtree(victim)
    assert split(cfg)[1] == sorted(val_ids)


def test_a_recorded_held_out_session_that_is_unusable_now_is_an_error(recorded):
    cfg, train_ids, val_ids = recorded
    session = build_index(cfg.data).sessions[val_ids[0]].path
    for jpeg in list(session.rglob("*.jpg"))[:3]:
        jpeg.write_bytes(b"not a jpeg")  # corrupt frames are skipped; a missing robot log makes the session unusable
    next(session.glob("robot_*.csv")).unlink()
    with pytest.raises(DataError, match=val_ids[0].split("/")[-1]):
        split(cfg)


def test_training_sessions_are_refused_as_held_out(recorded):
    cfg, train_ids, val_ids = recorded
    cfg.eval.sessions = [train_ids[0].split("/")[-1]]
    with pytest.raises(ConfigError, match="training sessions"):
        split(cfg)
    cfg.eval.sessions = [val_ids[0]]
    assert split(cfg)[1] == [val_ids[0]]


def test_evaluation_refuses_features_of_another_backbone_setting(recorded):
    """The eval side of the store check: the store read must be the one the heads were trained on, unless allowed."""
    cfg, _, _ = recorded
    cfg.backbone.image_resize_height, cfg.backbone.image_resize_width = 360, 640
    with pytest.raises(CheckpointMismatchError, match="pixel_budget"):
        held_out(cfg)
    cfg.eval.allow_backbone_mismatch = True
    from vla_lib.vlm.feature_store import CacheMissError
    with pytest.raises(CacheMissError):  # allowed: it goes on to read that store (empty here)
        held_out(cfg)
