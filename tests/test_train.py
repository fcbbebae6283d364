"""Stage-1 training: the training command line of docs/training.md, exact resume after SIGKILL, and 2 processes (gloo on CPU)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import ci_config, run_cli
from tests.test_config import SEED_TRAIN
from vla_lib.config import RunConfig
from vla_lib.errors import ConfigError
from vla_lib.policy.checkpoint import CheckpointMismatchError, load_checkpoint
from vla_lib.vlm.cache_build import build_cache

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def prepared(synth_root, tmp_path_factory):
    """A built cache for the shared synthetic sessions; returns the --set arguments that point at it."""
    cfg = ci_config(synth_root, tmp_path_factory.mktemp("train"))
    build_cache(cfg, log=lambda *a: None)
    return ["--mode", "train", "--params", "params/ci.yaml", "--data-root", str(synth_root), "--cache-dir", cfg.cache.dir,
            "--set", f"backbone.tiny_model_dir={cfg.backbone.tiny_model_dir}", "--wandb-mode", "disabled"]


_run = run_cli


def test_seed_command_line_trains_and_checkpoints(prepared, tmp_path):
    # docs/training.md's training line as written, then the CI pixel budget (the cache was built for it: another budget
    # would miss)
    args = SEED_TRAIN + prepared[2:] + ["--image-resize-height", "168", "--image-resize-width", "308", "--epochs", "2",
                                    "--batch-size", "4", "--grad-accum-steps", "2"]
    out = _run(args, tmp_path)
    assert "Epoch 2 | Train:" in out and "[Best] Validation improved" in out and "sensor: " in out
    ckpts = tmp_path / "checkpoints"
    for name in ["qwen_vla_sensor.pt", "qwen_vla_sensor_best.pt", "qwen_vla_sensor_final.pt"]:
        assert (ckpts / name).exists()
    ckpt = load_checkpoint(ckpts / "qwen_vla_sensor_final.pt")
    assert ckpt.run_config["train"]["grad_accum_steps"] == 2 and len(ckpt.stats.aline_mean) == 1025
    # what the numbers depend on travels with the heads: the episode split and the feature store's parts
    assert ckpt.split["train"] and ckpt.split["val"] and not set(ckpt.split["train"]) & set(ckpt.split["val"])
    assert ckpt.features["parts"]["pixel_budget"] == 168 * 308 and ckpt.features["parts"]["dtype"] == "float32"
    rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert {"train/loss_step", "train/lr", "train/grad_norm"} <= set(rows[0])
    assert {"train/loss_epoch", "val/loss_epoch", "train/sensor_samples", "train/nonsensor_samples"} <= set(rows[-1])
    blob = torch.load(ckpts / "qwen_vla_sensor_final.pt", weights_only=True)
    blob["model_state_dict"].pop("expert.head.bias")
    torch.save(blob, tmp_path / "broken.pt")
    with pytest.raises(CheckpointMismatchError, match="missing"):
        load_checkpoint(tmp_path / "broken.pt")


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(prepared, tmp_path):
    extra = ["--epochs", "2", "--batch-size", "4", "--save-every-steps", "1", "--set", "model.dropout=0.1"]
    _run(prepared, tmp_path / "straight", extra)
    proc = _run(prepared, tmp_path / "killed", extra, wait=False)
    metrics = tmp_path / "killed" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 12:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "checkpoints" / "qwen_vla_sensor_final.pt").exists(), "killed too late"
    # the resume state holds tensors and plain values only: it loads without unpickling arbitrary objects
    torch.load(tmp_path / "killed/checkpoints/resume_state.pt", weights_only=True)
    out = _run(prepared, tmp_path / "killed", extra)
    assert "Resumed from" in out
    a = torch.load(tmp_path / "straight/checkpoints/qwen_vla_sensor_final.pt", weights_only=True)["model_state_dict"]
    b = torch.load(tmp_path / "killed/checkpoints/qwen_vla_sensor_final.pt", weights_only=True)["model_state_dict"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)
    # the log of the resumed run is the log of the uninterrupted one: no duplicate steps, exact epoch losses
    rows = {run: [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
            for run in ("straight", "killed")}
    steps = [r["step"] for r in rows["killed"] if "train/loss_step" in r]
    assert steps == sorted(set(steps)) == [r["step"] for r in rows["straight"] if "train/loss_step" in r]
    for a_row, b_row in zip(rows["straight"], rows["killed"], strict=True):
        a_row.pop("train/samples_per_s", None), b_row.pop("train/samples_per_s", None)
        assert a_row.keys() == b_row.keys()
        for k in a_row:
            assert a_row[k] == pytest.approx(b_row[k], rel=1e-5, abs=1e-7), (k, a_row, b_row)
    summary = json.loads((tmp_path / "killed/train_summary.json").read_text())
    assert len(summary["history"]) == 2 and summary["finished"]


def test_a_finished_run_is_never_rewritten_and_other_settings_are_refused(prepared, tmp_path):
    extra = ["--epochs", "1", "--batch-size", "8"]
    _run(prepared, tmp_path, extra)
    final = tmp_path / "checkpoints/qwen_vla_sensor_final.pt"
    before = (final.stat().st_mtime_ns, (tmp_path / "train_summary.json").read_text())
    out = _run(prepared, tmp_path, extra)  # the same command again: nothing to do, exit 0, nothing touched
    assert "is a finished run" in out and "--run-name" in out
    assert (final.stat().st_mtime_ns, (tmp_path / "train_summary.json").read_text()) == before
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for change in (["--epochs", "3"], ["--lr", "1e-6"], ["--batch-size", "4"]):
        done = subprocess.run([sys.executable, "-m", "vla_lib", *prepared, "--output-dir", str(tmp_path),
                               "--set", f"output_root={tmp_path}", *extra, *change], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 2, done.stderr[-2000:]
        last = done.stderr.strip().splitlines()[-1]
        assert last.startswith("error:") and "other settings" in last and "--run-name" in last, done.stderr
        assert "Traceback" not in done.stderr
    assert final.stat().st_mtime_ns == before[0]


def test_logged_step_loss_is_the_mean_over_the_accumulation_window(prepared, tmp_path, monkeypatch):
    """The step loss shown and logged is the optimiser step's loss (mean of its micro-batches), not a
    micro-batch's loss times the accumulation steps."""
    import vla_lib.train as stage1
    from vla_lib import training
    from vla_lib.cli import build_parser, config_from_args

    seen = []
    real = stage1.loss_fn

    def spy(model, batch, cfg, mean_weight, device):
        out = real(model, batch, cfg, mean_weight, device)
        if model.training:
            seen.append(float(out[0].detach()))
        return out
    monkeypatch.setattr(stage1, "loss_fn", spy)
    args = prepared + ["--output-dir", str(tmp_path), "--set", f"output_root={tmp_path}", "--epochs", "1", "--batch-size", "4", "--grad-accum-steps", "4"]
    summary = training.train(config_from_args(build_parser().parse_args(args)), log=lambda *a: None)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    logged = [r["train/loss_step"] for r in rows if "train/loss_step" in r]
    assert len(logged) == summary["global_step"] == len(seen) // 4
    for k, value in enumerate(logged):
        assert value == pytest.approx(sum(seen[4 * k:4 * k + 4]) / 4, rel=1e-5)


@pytest.mark.slow
# compiled: 70 s with a cold compile cache, in the quality gate; the suite keeps the eager run and the one-process
# compiled check (test_compiled_training_matches_eager_and_keeps_checkpoint_keys)
@pytest.mark.parametrize("compiled", [False, pytest.param(True, marks=pytest.mark.quality)], ids=["eager", "compiled"])
def test_two_processes_train_with_equal_weights(prepared, tmp_path, compiled):
    # compiled: the heads compiled in place, then wrapped by DDP in accelerate's prepare (params/stage1.yaml's path)
    launcher = (sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "vla_lib")
    out = _run(prepared, tmp_path, ["--epochs", "1", "--batch-size", "4", "--set", f"train.compile={compiled}"],
               launcher=launcher)
    assert "on 2 process(es)" in out and ("Heads compiled in place" in out) == compiled
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    assert summary["processes"] == 2 and summary["weights_equal_across_ranks"]


@pytest.mark.slow
def test_compiled_training_matches_eager_and_keeps_checkpoint_keys(prepared, tmp_path):
    # train.compile compiles the heads in place: the checkpoint must load into an uncompiled policy (no `_orig_mod.`
    # prefixes), and the compiled steps (CPU: Inductor, no CUDA graphs) must compute what the eager ones do.
    extra = ["--epochs", "1", "--batch-size", "8"]
    _run(prepared, tmp_path / "eager", extra)
    assert "Heads compiled in place" in _run(prepared, tmp_path / "compiled", extra + ["--set", "train.compile=true"])
    a = torch.load(tmp_path / "eager/checkpoints/qwen_vla_sensor_final.pt", weights_only=True)["model_state_dict"]
    model = load_checkpoint(tmp_path / "compiled/checkpoints/qwen_vla_sensor_final.pt").heads  # refuses odd keys
    assert a.keys() == model.state_dict().keys()
    rows = {run: [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
            for run in ("eager", "compiled")}
    first = [rows[run][0]["train/loss_step"] for run in rows]  # same weights, same batch: only rounding differs
    assert first[0] == pytest.approx(first[1], rel=1e-5)
    val = [rows[run][-1]["val/loss_epoch"] for run in rows]  # after an epoch of Adam steps: rounding compounds
    assert val[0] == pytest.approx(val[1], rel=1e-4), (first, val)


def test_resume_refuses_another_process_count_other_files_and_reports_free_changes(tmp_path):
    """An exact resume needs the same settings and the same number of processes; a file that is not a resume state
    is refused in one line; changes the weights do not depend on are honoured and said."""
    import numpy as np

    from vla_lib.train_state import RESUME_FORMAT, RunStateError, read_resume

    cfg = RunConfig.from_yaml(REPO / "params/ci.yaml")
    path = tmp_path / "resume_state.pt"
    torch.save({"format": RESUME_FORMAT, "run_config": cfg.to_dict(), "processes": 2, "split": {"train": [], "val": []},
                "progress": {}}, path)
    with pytest.raises(RunStateError, match="2 process"):
        read_resume(path, cfg, processes=1)
    said = []
    free = cfg.with_overrides({"train.num_workers": 3, "train.log_every_steps": 5})
    assert read_resume(path, free, processes=2, say=said.append)["processes"] == 2
    assert "train.num_workers: 0 -> 3" in said[0] and "train.log_every_steps" in said[0]
    torch.save({"rng": {"numpy": np.random.get_state()}}, path)  # pickled numpy objects: weights_only refuses them
    with pytest.raises(RunStateError, match="UnpicklingError: not a resume state"):
        read_resume(path, cfg, processes=1)
    torch.save({"progress": {}}, path)
    with pytest.raises(RunStateError, match="is not a resume state \\(no run_config, processes, split\\)"):
        read_resume(path, cfg, processes=1)


@pytest.mark.parametrize("version", [None, "vla_lib.resume/0"])
def test_a_resume_state_of_another_or_no_format_is_refused_in_one_line(tmp_path, version):
    """A file whose layout this version does not write (no `format`, or another) is refused before anything is
    restored, naming the file and what to do, not resumed from."""
    from vla_lib.train_state import RunStateError, read_resume

    cfg = RunConfig.from_yaml(REPO / "params/ci.yaml")
    state = {"run_config": cfg.to_dict(), "processes": 1, "split": {"train": [], "val": []}, "progress": {}}
    path = tmp_path / "resume_state.pt"
    torch.save(state if version is None else {**state, "format": version}, path)
    with pytest.raises(RunStateError) as refused:
        read_resume(path, cfg, processes=1)
    line = str(refused.value)
    assert "\n" not in line and line.startswith(f"{path} is a resume state of format {version!r}, not "
                                                 "'vla_lib.resume/1'") and "start without resuming" in line


def test_a_saved_run_config_loads_back_as_it_was_and_a_stale_derived_value_is_refused():
    """Checkpoints store `to_dict()` (derived fields as null) and load it with `from_dict`: the same config. A stored
    derived value that disagrees with its source (nothing this version writes) is refused, not silently re-derived."""
    cfg = RunConfig.from_yaml(REPO / "params/ci.yaml")
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
    stale = cfg.to_dict()
    stale["model"]["horizon"] = cfg.data.horizon + 1
    with pytest.raises(ConfigError, match="model.horizon"):
        RunConfig.from_dict(stale)


def test_a_non_finite_loss_stops_the_run_at_its_step_and_nothing_after_it_is_saved(prepared, tmp_path, monkeypatch):
    from vla_lib import train as stage1, training
    from vla_lib.cli import build_parser, config_from_args
    from vla_lib.finite_guard import NonFiniteError

    cfg = config_from_args(build_parser().parse_args(
        prepared + ["--output-dir", str(tmp_path), "--set", f"output_root={tmp_path}", "--epochs", "2", "--batch-size", "4", "--save-every-steps", "1"]))
    stock, calls = stage1.Trainer.loss, []

    def loss(self, batch):  # the second training batch's loss turns NaN (validation never runs before it)
        out = stock(self, batch)
        calls.append(1)
        return (out[0] * float("nan"), *out[1:]) if len(calls) == 2 else out

    monkeypatch.setattr(stage1.Trainer, "loss", loss)
    with pytest.raises(NonFiniteError, match="optimiser step 2: the loss and gradient norm were not finite"):
        training.train(cfg, log=lambda *a: None)
    ckpts = tmp_path / "checkpoints"
    assert not any((ckpts / name).exists() for name in ("qwen_vla_sensor.pt", "qwen_vla_sensor_best.pt"))
    state = torch.load(ckpts / "resume_state.pt", weights_only=True)  # written after step 1, not after step 2
    assert state["progress"]["global_step"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def _cli_error(args, env=None) -> str:
    done = subprocess.run([sys.executable, "-m", "vla_lib", *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in done.stderr, done.stderr
    return lines[0]


def test_a_split_without_validation_samples_is_one_line_with_the_fix(prepared, tmp_path):
    line = _cli_error(prepared + ["--output-dir", str(tmp_path), "--set", f"output_root={tmp_path}", "--set",
                                  "data.val_fraction=0"])
    assert "no validation samples" in line and "data.val_fraction" in line and "data.val_sessions" in line


def test_stage1_params_offline_is_one_line_naming_the_hub_id_and_the_fix(synth_root, tmp_path):
    for mode in ("cache", "train"):
        line = _cli_error(["--mode", mode, "--params", "params/stage1.yaml", "--data-root", str(synth_root),
                           "--cache-dir", str(tmp_path / "cache"), "--run-name", "offline",
                           "--set", f"output_root={tmp_path}"],
                          env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})  # no cached copy either
        assert "'Qwen/Qwen2.5-VL-3B-Instruct' (a hub id) could not be loaded" in line and "hf download" in line
        assert "--random-weights" in line


def test_gradients_stay_in_their_own_tensors_across_steps(prepared, tmp_path):
    """A compiled model with CUDA graphs writes its backward outputs into graph memory that the next micro-batch
    overwrites: gradients must never be adopted from there (set to None and re-created), but accumulate in tensors
    of their own, zeroed in place (otherwise params/stage1.yaml's batch 1 x accum 8 crashes on CUDA)."""
    from vla_lib import train as training
    from vla_lib.cli import build_parser, config_from_args

    cfg = config_from_args(build_parser().parse_args(
        prepared + ["--output-dir", str(tmp_path), "--set", f"output_root={tmp_path}", "--batch-size", "2", "--grad-accum-steps", "2", "--max-steps", "3"]))
    run = training.Trainer(cfg, log=lambda *a: None)
    run.setup()
    run.resume_or_start()
    params = [p for p in run.model.parameters() if p.requires_grad]
    before = [p.grad.data_ptr() for p in params]
    run.train_epoch()
    assert run.progress["global_step"] == 3
    assert [p.grad.data_ptr() if p.grad is not None else None for p in params] == before


def test_a_checkpoint_says_which_stage_wrote_it_and_older_formats_are_refused(prepared, tmp_path):
    from vla_lib.policy.checkpoint import checkpoint_stage

    _run(prepared, tmp_path, ["--epochs", "1", "--batch-size", "8"])
    path = tmp_path / "checkpoints" / "qwen_vla_sensor_final.pt"
    assert checkpoint_stage(path) == "stage1" and load_checkpoint(path).stage == "stage1"
    blob = torch.load(path, weights_only=True)
    for change in ({"format": "vla_lib.stage1/1"}, {"stage": None}):
        torch.save({**blob, **change}, tmp_path / "old.pt")
        with pytest.raises(CheckpointMismatchError, match="train it again"):
            load_checkpoint(tmp_path / "old.pt")
