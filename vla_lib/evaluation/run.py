"""Evaluation entry points shared by the CLI (`--mode eval`) and notebook 04: everything from one RunConfig."""
from __future__ import annotations

import platform
import warnings
from pathlib import Path

import torch

from vla_lib.jsonio import write_json
from vla_lib.commands import command_for
from vla_lib.data import scenarios
from vla_lib.data.recorder_files import DataError
from vla_lib.data.samples import build_index
from vla_lib.data.synthetic import phase_labels
from vla_lib.errors import ConfigError
from vla_lib.evaluation.latency import latency_sweep, time_action_step
from vla_lib.evaluation.offline import evaluate_offline
from vla_lib.evaluation.replay_accuracy import fresh_vs_stale
from vla_lib.runtime.loop import Runtime, run_loop
from vla_lib.runtime.replay_io import ReplayIO
from vla_lib.evaluation.encoded_features import EncodedFeatures
from vla_lib.policy.checkpoint import CheckpointMismatchError, feature_mismatch, load_checkpoint
from vla_lib.policy.loading import checkpoint_path, load_policy
from vla_lib.vlm.cache_build import open_store
from vla_lib.vlm.feature_store import FeatureTable


def split(cfg, ckpt=None):
    """(the whole SampleIndex, the held-out session ids): exactly the validation sessions the checkpoint recorded at
    training time (or `eval.sessions` when given), never a new draw, so an added, removed or damaged recording cannot
    move a session between training and held-out. Refuses held-out sessions the heads were trained on."""
    ckpt = ckpt or load_checkpoint(checkpoint_path(cfg))
    index = build_index(cfg.data)  # the same data.check_images policy as training
    trained_on = set(ckpt.split.get("train", []))
    if cfg.eval.sessions and not trained_on:
        warnings.warn(f"{checkpoint_path(cfg)} records no training sessions (saved without a split): "
                      "eval.sessions cannot be checked against them")
    if cfg.eval.sessions:
        wanted = [s for s in sorted(index.sessions) if s in cfg.eval.sessions or s.split("/")[-1] in cfg.eval.sessions]
        unknown = set(cfg.eval.sessions) - set(wanted) - {s.split("/")[-1] for s in wanted}
        if unknown:
            raise DataError(index.data_root, f"eval.sessions not found among usable sessions: {sorted(unknown)} "
                                             f"(skipped: {[s['session'] + ': ' + s['reason'] for s in index.skipped]})")
    elif ckpt.split.get("val"):
        wanted = list(ckpt.split["val"])
    else:
        raise ConfigError(f"{checkpoint_path(cfg)} records no validation sessions (written before splits were "
                          "recorded): name the held-out sessions with --set 'eval.sessions=[...]'")
    overlap = sorted(set(wanted) & trained_on)
    if overlap:
        raise ConfigError(f"held-out sessions {overlap} are training sessions of {checkpoint_path(cfg)}: "
                          "evaluating on them would report training error as held-out error")
    unusable = [s for s in wanted if s not in index.sessions]
    if unusable:
        reasons = {s["session"]: f"{s['file']}: {s['reason']}" for s in index.skipped}
        raise DataError(index.data_root, "recorded held-out sessions are not usable now: " + "; ".join(
            f"{s} ({reasons.get(s.split('/', 1)[-1], reasons.get(s, 'not found under data.root'))})" for s in unusable))
    return index, sorted(wanted)


def held_out(cfg, ckpt=None, held=None):
    """(held-out SampleIndex, its FeatureTable), from the feature store the heads were trained on. `held`: the
    (index, held-out ids) of `split`, when the caller has it already (building the index reads every session)."""
    ckpt = ckpt or load_checkpoint(checkpoint_path(cfg))
    if ckpt.stage == "stage2":  # never a feature store: the adapter changes every feature
        raise CheckpointMismatchError(
            f"{checkpoint_path(cfg)} is a Stage-2 checkpoint (LoRA adapter {ckpt.features['parts']['adapter']}): "
            "its heads need the adapted backbone's features, not the Stage-1 feature store; run_offline encodes them")
    index, val_ids = held or split(cfg, ckpt)
    val = index.subset(val_ids)
    store = open_store(cfg, create=False)
    if not ckpt.features:
        warnings.warn(f"{checkpoint_path(cfg)} records no feature-store parts (saved without them): "
                      "whether these features are the ones its heads were trained on cannot be checked")
    differs = feature_mismatch(ckpt.features.get("parts", {}), store.parts) if ckpt.features else []
    if differs and not cfg.eval.allow_backbone_mismatch:
        raise CheckpointMismatchError(
            f"{checkpoint_path(cfg)} was trained on other VL features than these settings give: " + "; ".join(differs)
            + ". Evaluate with the training settings, or pass --allow-backbone-mismatch")
    return val, FeatureTable(store, val.table["cache_key"], command_for(cfg, "cache"))


def run_offline(cfg, device: str = "cpu", held=None):
    """Offline metrics of the configured checkpoint on the held-out sessions -> outputs/<run>/metrics.json."""
    ckpt = load_checkpoint(checkpoint_path(cfg))
    if ckpt.stage == "stage2":  # Stage 2: held-out features from the adapted backbone, no store
        index, val_ids = held or split(cfg, ckpt)
        val = index.subset(val_ids)
        features = EncodedFeatures(load_policy(cfg, device=device), val, max(cfg.cache.batch_size, 16))
    else:
        val, features = held_out(cfg, ckpt, held)
    result = evaluate_offline(ckpt.heads, val, cfg.data, features, ckpt.stats, device=device,
                              phases=sample_phases(cfg, val))
    result.metrics["checkpoint"] = str(checkpoint_path(cfg))
    write_json(Path(cfg.run_dir) / "metrics.json", merge=True, values={"offline": result.metrics})
    return result


def sample_phases(cfg, index):
    """Each sample's phase where the synthetic truth knows it: the sensor task's (descent, approach, insert, hold) or
    the scripted scenario's (home, approach, pause, insert, hold); None for recorded data."""
    if cfg.synthetic.scenario == "sensor_task":
        return scenarios.sample_phases(index, cfg.synthetic.task)
    return phase_labels(index)


def run_realtime_replay(cfg, policy, session_id: str | None = None, held=None, log=print):
    """Replay one held-out session (the first with sensor unless named) through the real-time loop. `held`: the
    (index, held-out ids) of `split`, when the caller has it already."""
    index, val_ids = held or split(cfg)
    if session_id is None:
        with_sensor = [s for s in val_ids if index.sessions[s].has_sensor]
        session_id = (with_sensor or val_ids)[0]
    instruction = index.table.loc[index.table.session_id == session_id, "instruction"].iloc[0]
    replay = ReplayIO(index.sessions[session_id], cfg.data)
    log(f"Real-time replay of {session_id} for {cfg.eval.realtime_duration_s:g} s "
        f"(actions at {1 / cfg.data.action_dt_s:g} Hz, {cfg.runtime.execution}, VL {'as fast as it can' if not cfg.eval.realtime_vl_rate_hz else f'at {cfg.eval.realtime_vl_rate_hz:g} Hz'})")
    # One untimed encode and action step first (VLAPolicy.warm_up): compiling and capturing would otherwise pass
    # the replayed session's whole length before the first action step, and race the VL thread.
    replay.begin()
    policy.warm_up(instruction, replay.views()[0], replay.sensor_window(),
                   replay.pose_history(policy.history_steps) if policy.history_steps else None)
    runtime = Runtime.from_config(cfg, replay.actuator)  # the robot's runtime; the replay's actuator records
    report = run_loop(policy, replay, runtime, instruction, cfg.eval.realtime_duration_s, cfg.eval.realtime_vl_rate_hz,
                      end=replay.end)
    report.summary.update(fresh_vs_stale(policy, replay, instruction, report))
    report.summary["session"] = session_id
    write_json(Path(cfg.run_dir) / "metrics.json", merge=True, values={"realtime": report.summary})
    return report


def run_latency(cfg, policy, log=print) -> dict:
    """The VL sweep (views x resolutions) and the action step -> metrics.json["latency"]; returns the table too."""
    table = latency_sweep(policy.backbone, cfg.eval.latency_views, cfg.eval.latency_resolutions,
                          cfg.eval.latency_repeats, cfg.eval.latency_warmup, cfg.cache.pooling, log=log)
    action = time_action_step(policy.heads, policy.device)
    result = {"device": _device_name(policy.device), "backbone": policy.backbone.name,
              "vl_update": table.to_dict("records"),
              "action_step": action}
    write_json(Path(cfg.run_dir) / "metrics.json", merge=True, values={"latency": result})
    return {"table": table, **result}


def _device_name(device) -> str:
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
