"""The inference API: checkpoint round trip, refusal of mismatched checkpoints, the input forms, a live replay."""
import numpy as np
import pytest
import torch
from PIL import Image

from vla_lib.config import RunConfig
from vla_lib.data.normalization import compute_stats
from vla_lib.data.samples import SampleDataset, build_index
from vla_lib.data.timeline import SensorWindow
from vla_lib.evaluation.replay_accuracy import fresh_vs_stale
from vla_lib.runtime.loop import Runtime, run_loop
from vla_lib.runtime.replay_io import ReplayIO
from vla_lib.policy.vla_policy import VLAPolicy
from vla_lib.models.configuration_policy import PolicyConfig
from vla_lib.models.inputs import PolicyInputs
from vla_lib.policy.checkpoint import CheckpointMismatchError, save_checkpoint
from vla_lib.models.modeling_policy import Stage1Policy
from vla_lib.vlm.cache_build import store_parts
from vla_lib.vlm.interface import load_backbone


@pytest.fixture(scope="module")
def setup(synth_root, tmp_path_factory):
    """An in-memory policy (random heads, real stats) saved as a checkpoint, and the backbone it was built for."""
    tmp = tmp_path_factory.mktemp("inference")
    cfg = RunConfig.from_yaml("params/ci.yaml")
    cfg.data.root = str(synth_root)
    cfg.backbone.tiny_model_dir = str(tmp / "tiny")
    index = build_index(cfg.data)
    stats = compute_stats(index)
    backbone = load_backbone(cfg.backbone)
    cfg.model.vl_dim = backbone.hidden_size
    torch.manual_seed(0)
    heads = Stage1Policy(cfg.model, *stats.action_arrays(), *stats.sensor_arrays()).eval()
    parts = store_parts(cfg, backbone.parts())
    save_checkpoint(tmp / "heads.pt", heads, stats, cfg, epoch=1, step=1, val_loss=0.0,
                    features={"fingerprint": "test", "parts": parts})
    return cfg, index, heads, backbone, tmp / "heads.pt"


def _observation(index, cfg, i):
    sample = SampleDataset(index, cfg.data)[i]
    paths = index.view_paths(i)
    return index.table.instruction[i], paths, SensorWindow(sample["sensor"], sample["sensor_mask"]), index.history[i]


def test_saved_checkpoint_predicts_as_the_in_memory_model(setup):
    cfg, index, heads, backbone, path = setup
    policy = VLAPolicy.from_checkpoint(path, device="cpu")
    i = int(np.nonzero(index.table.has_sensor.to_numpy())[0][5])
    instruction, paths, window, history = _observation(index, cfg, i)
    chunk = policy.predict(instruction, paths, window, history)
    assert chunk.shape == (8, 7)
    assert (chunk[:, 6] == cfg.data.gripper_value).all()  # untrained dimension: the training constant
    inputs = backbone.preparer()([([p for p in paths if p], instruction, [p is not None for p in paths])])
    feats, mask = backbone.encode(inputs, cfg.cache.pooling)
    expected = heads.predict(PolicyInputs(feats, mask, torch.as_tensor(window.values)[None],
                                          torch.as_tensor(window.valid)[None], torch.as_tensor(history)[None]))[0]
    expected = expected.numpy()
    np.testing.assert_allclose(chunk, expected, atol=1e-5)
    # paths, PIL images and arrays are the same input; a point the window marks invalid is a missing sample
    pil = [Image.open(p).convert("RGB") for p in paths]
    np.testing.assert_allclose(policy.predict(instruction, pil, window, history), chunk, atol=1e-5)
    np.testing.assert_allclose(policy.predict(instruction, [np.asarray(im) for im in pil], window, history), chunk,
                               atol=1e-5)
    k = int(np.flatnonzero(window.valid)[10])  # a point that carries a sample
    point = np.zeros(65, bool)
    point[k] = True
    holed = window.invalid_where(point)
    valid = torch.as_tensor(window.valid)[None].clone()
    valid[0, k] = False
    zeroed = window.values.copy()
    zeroed[k] = 0.0
    expected_holed = heads.predict(PolicyInputs(feats, mask, torch.as_tensor(zeroed)[None], valid,
                                                torch.as_tensor(history)[None]))[0].numpy()
    np.testing.assert_allclose(policy.predict(instruction, paths, holed, history), expected_holed, atol=1e-5)
    assert not np.allclose(expected_holed, chunk)  # the masked point really is left out
    # batched == one by one; a missing view and a missing sensor are accepted and mean what they say
    missing_view = [None] + paths[1:]
    both = SensorWindow(np.stack([window.values] * 2), np.stack([window.valid] * 2))
    batch = policy.predict_batch([instruction] * 2, [paths, missing_view], both, np.stack([history, history]))
    np.testing.assert_allclose(batch[0], chunk, atol=1e-5)
    np.testing.assert_allclose(batch[1], policy.predict(instruction, missing_view, window, history), atol=1e-5)
    assert not np.allclose(batch[1], chunk)
    no_sensor = heads.predict(PolicyInputs(feats, mask, torch.zeros(1, 65, 1026), torch.zeros(1, 65, dtype=torch.bool),
                                           torch.as_tensor(history)[None]))[0].numpy()
    np.testing.assert_allclose(policy.predict(instruction, paths, None, history), no_sensor, atol=1e-5)
    # a dataset sample without sensor, passed as it comes, is no sensor (its zeros are not readings of zero force)
    j = int(np.nonzero(~index.table.has_sensor.to_numpy())[0][0])
    blind = _observation(index, cfg, j)[2]
    assert not blind.valid.any()
    np.testing.assert_allclose(policy.predict(instruction, paths, blind, history), no_sensor, atol=1e-5)
    with pytest.raises(TypeError, match="SensorWindow"):  # a bare array cannot say which points are samples
        policy.predict(instruction, paths, window.values, history)
    with pytest.raises(ValueError, match="expected 5 views"):
        policy.predict(instruction, paths[:3], window, history)


def test_mismatched_checkpoints_are_refused(setup, tmp_path):
    cfg, index, heads, backbone, path = setup
    blob = torch.load(path, weights_only=True)
    blob["model_state_dict"].pop("sensor_encoder.proj.0.weight")
    torch.save(blob, tmp_path / "partial.pt")
    with pytest.raises(CheckpointMismatchError, match="missing"):
        VLAPolicy.from_checkpoint(tmp_path / "partial.pt", device="cpu")
    blob = torch.load(path, weights_only=True)
    blob["policy_config"]["vl_dim"] = 32  # heads for another backbone width
    blob["model_state_dict"] = Stage1Policy(PolicyConfig(**blob["policy_config"])).state_dict()
    torch.save(blob, tmp_path / "other_width.pt")
    with pytest.raises(CheckpointMismatchError, match="expect 32-d VL features"):
        VLAPolicy.from_checkpoint(tmp_path / "other_width.pt", device="cpu")


def test_heads_refuse_another_backbone_setting_unless_allowed(setup):
    """The checkpoint records the feature store's parts; another pixel budget or dtype is refused, saying
    what differs, unless explicitly allowed."""
    cfg, index, heads, backbone, path = setup
    with pytest.raises(CheckpointMismatchError, match=r"pixel_budget: trained on 51744, now 230400"):
        VLAPolicy.from_checkpoint(path, device="cpu", image_resize_height=360, image_resize_width=640)
    with pytest.raises(CheckpointMismatchError, match=r"dtype: trained on 'float32', now 'bfloat16'"):
        VLAPolicy.from_checkpoint(path, device="cpu", dtype="bf16")
    policy = VLAPolicy.from_checkpoint(path, device="cpu", image_resize_height=360, image_resize_width=640,
                                       allow_backbone_mismatch=True)
    assert policy.backbone.pixel_budget == 230400


def test_realtime_replay_runs_at_the_action_rate_without_future_frames(setup):
    cfg, index, heads, backbone, path = setup
    policy = VLAPolicy.from_checkpoint(path, device="cpu")
    sid = next(s for s in index.sessions if index.sessions[s].has_sensor)
    replay = ReplayIO(index.sessions[sid], cfg.data)
    instruction = index.table.instruction[index.table.session_id == sid].iloc[0]
    report = run_loop(policy, replay, Runtime.from_config(cfg, replay.actuator), instruction, duration_s=1.5)
    s = report.summary
    assert 12 <= s["action_steps"] <= 16 and s["vl_refreshes"] >= 1
    assert s["action_latency_ms_p50"] < 100 and s["action_latency_ms_p99"] >= s["action_latency_ms_p50"]
    for tick in report.ticks:  # features never from the future, in any view
        assert tick["staleness_s"] >= 0 and tick["chunk"].shape == (8, 7)
        for view, j in zip(cfg.data.views, tick["ident"]):
            if j >= 0:
                assert replay.s.frames[view].times[j] + replay.cam_offset <= tick["t"]
    assert len(replay.commands) == s["action_steps"]
    ts = [c.t for c in replay.commands]
    assert np.all(np.diff(ts) > 0.05)  # paced by the clock, not run flat out
    quality = fresh_vs_stale(policy, replay, instruction, report)
    assert np.isfinite(quality["mse_loop_features"]) and np.isfinite(quality["mse_fresh_features"])


def test_a_contact_memory_policy_refuses_a_call_without_the_memory(setup, tmp_path):
    """Trained with the contact memory, a call without it would read "not in contact" and drive on: refused."""
    cfg, index, heads, backbone, path = setup
    blob = torch.load(path, weights_only=True)
    blob["policy_config"]["contact_memory"] = True
    blob["model_state_dict"] = Stage1Policy(PolicyConfig(**blob["policy_config"])).state_dict()
    torch.save(blob, tmp_path / "contact.pt")
    policy = VLAPolicy.from_checkpoint(tmp_path / "contact.pt", device="cpu")
    sample = SampleDataset(index, cfg.data)[0]
    paths = [str(p) if p else None for p in index.view_paths(0)]
    window = SensorWindow(sample["sensor"], sample["sensor_mask"])
    with pytest.raises(ValueError, match="trained with model.contact_memory"):
        policy.predict(index.table.instruction[0], paths, window, index.history[0])
    chunk = policy.predict(index.table.instruction[0], paths, window, index.history[0], [1.0, 0.0, 0.0, -1.0])
    assert chunk.shape == (8, 7) and np.isfinite(chunk).all()
