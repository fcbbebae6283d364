import argparse

import pytest

from vla_lib.cli import build_parser, config_from_args
from vla_lib.config import ConfigError, RunConfig

SEED_TRAIN = ("--mode train --sensor-enabled --sensor-window-size 65 --image-resize-height 360 "
              "--image-resize-width 640 --finetune-vl none --training-stage stage1 --batch-size 1 "
              "--grad-accum-steps 8 --lr 1e-4 --sensor-lr 5e-4 --sensor-loss-weight 2.0").split()


def test_seed_command_line_maps_onto_the_config():
    cfg = config_from_args(build_parser().parse_args(SEED_TRAIN + ["--params", "params/demo.yaml"]))
    assert cfg.data.sensor_window_size == 65 == cfg.model.sensor_length
    assert (cfg.backbone.image_resize_height, cfg.backbone.image_resize_width) == (360, 640)
    assert cfg.train.batch_size == 1 and cfg.train.grad_accum_steps == 8 and cfg.train.sensor_lr == 5e-4
    assert cfg.model.preset == "small"  # from the YAML; flags override only what they name
    assert cfg.train.epochs == RunConfig.from_yaml("params/demo.yaml").train.epochs


def test_unknown_flags_and_bad_values_are_errors(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(SEED_TRAIN + ["--bogus"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--mode", "train", "--lr", "fast"])
    with pytest.raises(ConfigError, match="lora with stage2"):
        config_from_args(build_parser().parse_args(["--mode", "train", "--finetune-vl", "lora"]))
    with pytest.raises(ConfigError, match="unknown parameter"):
        config_from_args(build_parser().parse_args(["--mode", "train", "--set", "train.nope=1"]))


def test_yaml_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: many\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.*train.epochs"):
        RunConfig.from_yaml(bad)


def test_a_params_file_extends_another_section_by_section(tmp_path):
    from pathlib import Path

    from vla_lib.notebook import notebook_config

    (tmp_path / "base.yaml").write_text("run_name: base\ntrain: {epochs: 7, lr: 0.01}\nmodel: {preset: small}\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub/variant.yaml").write_text("extends: ../base.yaml\nrun_name: variant\ntrain: {lr: 0.5}\n")
    cfg = RunConfig.from_yaml(tmp_path / "sub/variant.yaml")
    assert (cfg.run_name, cfg.train.epochs, cfg.train.lr, cfg.model.preset) == ("variant", 7, 0.5, "small")
    assert notebook_config({"params_file": str(tmp_path / "sub/variant.yaml")}) == cfg  # notebooks read it alike
    # the shipped variants: Stage 2 of the demo is the demo's run but for what it names
    demo, stage2 = (RunConfig.from_yaml(Path("params") / f) for f in ("demo.yaml", "demo_stage2.yaml"))
    assert stage2.data == demo.data and stage2.model == demo.model and stage2.backbone == demo.backbone
    assert (stage2.run_name, stage2.train.training_stage) == ("demo_stage2", "stage2")
    import shutil

    import yaml

    from vla_lib.sweep import write_params

    (tmp_path / "params").mkdir()
    for f in ("demo.yaml", "demo_stage2.yaml"):
        shutil.copy(Path("params") / f, tmp_path / "params" / f)
    written = write_params("params/demo_stage2.yaml", root=tmp_path)  # sweeps read `extends` too
    members = [yaml.safe_load((tmp_path / path).read_text()) for _, path in written]
    assert members and all(RunConfig.from_dict(v).data == demo.data and v["train"]["training_stage"] == "stage2"
                           and "demo_stage2_sweep" in str(path) for v, (_, path) in zip(members, written))
    (tmp_path / "base.yaml").write_text("extends: sub/variant.yaml\n")
    with pytest.raises(ConfigError, match="circle"):
        RunConfig.from_yaml(tmp_path / "sub/variant.yaml")


def test_presets_fill_unset_fields_only():
    cfg = RunConfig.from_dict({"model": {"preset": "small", "expert_layers": 3}})
    assert cfg.model.sensor_dim == 128 and cfg.model.expert_layers == 3
    assert RunConfig.from_dict(cfg.to_dict()) == cfg


def test_one_source_for_each_value():
    """Derived values follow their source; a different value given twice is an error, not a silent
    overwrite; --sensor-temporal-length reaches the model; typos in choices are errors at construction."""
    cfg = config_from_args(build_parser().parse_args(["--mode", "train", "--sensor-window-size", "33",
                                                      "--sensor-temporal-length", "65"]))
    assert cfg.data.sensor_window_size == 33 and cfg.model.sensor_length == 65
    cfg = config_from_args(build_parser().parse_args(["--mode", "train", "--set", "data.horizon=5"]))
    assert cfg.model.horizon == 5 and RunConfig.from_dict(cfg.to_dict()).model.horizon == 5
    with pytest.raises(ConfigError, match="model.horizon"):
        RunConfig.from_dict({"data": {"horizon": 5}, "model": {"horizon": 8}})
    with pytest.raises(ConfigError, match="data.history_steps"):
        RunConfig.from_dict({"data": {"history_steps": 2}, "model": {"history_steps": 4}})
    assert RunConfig.from_dict({"model": {"history_steps": 2}}).data.history_steps == 2
    with pytest.raises(ConfigError, match="chunk_past_end"):
        RunConfig.from_dict({"data": {"chunk_past_end": "dorp"}})
    from vla_lib.config import DataConfig
    with pytest.raises(ConfigError, match="chunk_past_end"):
        DataConfig(chunk_past_end="dorp")  # also when built in code, not only from YAML
    with pytest.raises(ConfigError, match="pooling"):
        RunConfig.from_dict({"cache": {"pooling": "mean"}})
    # paths follow the run unless set explicitly
    cfg = RunConfig.from_dict({"run_name": "a"}).with_overrides({"run_name": "b"})
    assert cfg.train.output_dir == "outputs/b/train"
    assert RunConfig.from_dict({"train": {"output_dir": "x"}}).with_overrides({"run_name": "b"}).train.output_dir == "x"


def test_abbreviated_flags_are_errors_and_usage_errors_are_one_line(capsys):
    """--epoch is not --epochs; a usage error is one line and exit code 2."""
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["--mode", "train", "--epoch", "2"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--epoch" in err[0]


def test_demo_mode_passes_every_flag_to_the_notebooks(tmp_path):
    """The demo runs the notebooks with the resolved settings, flags and --set included."""
    from vla_lib.cli import main

    assert main(["--mode", "demo", "--params", "params/ci.yaml", "--only", "none", "--epochs", "3",
                 "--set", f"output_root={tmp_path}", "--set", "synthetic.num_sensor_sessions=1",
                 "--set", "synthetic.num_nosensor_sessions=0", "--set", "synthetic.duration_s=3",
                 "--set", f"synthetic.out_dir={tmp_path}/s", "--data-root", f"{tmp_path}/s"]) == 0
    written = RunConfig.from_yaml(tmp_path / "ci" / "params.yaml")
    assert written.train.epochs == 3 and written.output_root == str(tmp_path)


def test_expected_failures_are_one_line_with_the_fixing_command(tmp_path, synth_root):
    """A cache miss ends with one line, exit code 2, and the full command that fixes it (with the
    settings given); a missing params file likewise; the audit prints what it skipped and where its report is."""
    import subprocess
    import sys

    env_args = ["--data-root", str(synth_root), "--set", f"output_root={tmp_path}", "--set",
                f"backbone.tiny_model_dir={tmp_path / 'tiny'}", "--image-resize-height", "112"]
    done = subprocess.run([sys.executable, "-m", "vla_lib", "--mode", "train", "--params", "params/ci.yaml",
                           *env_args], capture_output=True, text=True, timeout=600)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: VL cache miss") and "--mode cache --params" in last
    params = last.split("--mode cache --params ")[1].split()[0]
    assert RunConfig.from_yaml(params).backbone.image_resize_height == 112  # the hint carries the flags given
    done = subprocess.run([sys.executable, "-m", "vla_lib", "--mode", "audit", "--params", "nope.yaml"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.strip() == "error: parameter file not found: nope.yaml"
    done = subprocess.run([sys.executable, "-m", "vla_lib", "--mode", "audit", "--params", "params/ci.yaml",
                           *env_args], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "session(s) skipped" in done.stdout and f"full report: {tmp_path}/ci/01_audit/audit.json" in done.stdout
    assert "clock offsets" in done.stdout


@pytest.mark.parametrize("values, message", [
    ({"runtime": {"execution": "blnd"}}, r"runtime.execution must be one of \['first', 'blend', 'rtc'\], got 'blnd'"),
    ({"runtime": {"limits": {"workspace_min": [1, 2]}}}, r"workspace_min / workspace_max must be \[x, y, z\]"),
    ({"runtime": {"faults": {"vl_error": "ignore"}}}, r"runtime.faults.vl_error must be one of \['hold', 'stop'"),
    ({"runtime": {"faults": {"policy_nonfinite": "continue"}}}, r"cannot be 'continue'"),
    ({"synthetic": {"scenario": "sensor_tsk"}}, r"synthetic.scenario must be one of \['scripted', 'sensor_task'\]"),
    ({"closed_loop": {"predictors": ["polcy"]}}, r"closed_loop.predictors\[\] must be one of"),
    ({"live": {"duration_s": 0}}, r"live: must be > 0: live.duration_s"),
    ({"live": {"execution": "blend"}}, r"unknown parameter\(s\) live.execution; known: \[.*'duration_s'"),
    ({"train": {"lrr": 1e-3, "epochz": 2}}, r"unknown parameter\(s\) train.epochz, train.lrr; known: \[.*'lr'"),
    ({"runtime": {"inject_delay_s": 0.7}}, r"must leave a step of the chunk"),
    # NaN compares false with every bound: a NaN blend_decay made NaN steps (each float of the section is checked)
    ({"runtime": {"blend_decay": float("nan")}}, r"^runtime.blend_decay must be finite, got nan$"),
    ({"runtime": {"execution_latency_s": float("inf")}}, r"^runtime.execution_latency_s must be finite"),
    ({"runtime": {"inject_delay_s": float("nan")}}, r"^runtime.inject_delay_s must be finite"),
    ({"runtime": {"limits": {"max_sensor_gap_s": float("nan")}}}, r"^runtime.limits.max_sensor_gap_s must be finite"),
    ({"runtime": {"limits": {"workspace_min": [1.0, float("nan"), 3.0]}}}, r"^runtime.limits.workspace_min must be"),
    ({"runtime": {"limits": {"max_sensor_gap_s": 0}}}, r"runtime.limits: must be > 0: max_sensor_gap_s"),
    ({"synthetic": {"task": {"action_latency_s": -1}}}, r"^synthetic.task: action_latency_s \(-1.0\) must be >= 0$"),
    ({"synthetic": {"task": {"tracking_tau_s": 0}}}, r"^synthetic.task: tracking_tau_s \(0.0\) must be > 0$"),
    ({"synthetic": {"task": {"force_limit_n": -1}}}, r"^synthetic.task: force_limit_n \(-1.0\) must be > 0$"),
    ({"synthetic": {"task": {"episode_s": float("nan")}}}, r"^synthetic.task.episode_s must be finite"),
    ({"synthetic": {"task": {"stiffness_range": [0.7, 0.3]}}}, r"^synthetic.task.stiffness_range must be \[lo, hi\]"),
    ({"synthetic": {"task": {"surface_offset_mm": [2.0, 1.0]}}}, r"^synthetic.task.surface_offset_mm must be"),
    ({"synthetic": {"task": {"sensor_drop_fraction": 1.0}}}, r"^synthetic.task.sensor_drop_fraction must be in"),
    # with the arm moving, a stopped stream answered `continue` would leave it moving with nothing watching the force
    *[({"live": {"send_actions": True}, "runtime": {"faults": {k: "continue"}}},
       rf"^live.send_actions moves the robot: runtime.faults.{k} must be hold or stop, not continue")
      for k in ("sensor_stale", "sensor_invalid", "robot_stale")],
])
def test_every_section_refuses_unknown_choices_with_the_allowed_ones(values, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_dict(values)


def test_every_mode_validates_the_whole_config_again(capsys):
    """A config changed after it was built (a notebook, a caller) is checked again at the start of every mode."""
    from vla_lib.cli import run_mode

    cfg = RunConfig()
    cfg.live.duration_s = -1
    with pytest.raises(ConfigError, match="live.duration_s"):
        run_mode(argparse.Namespace(mode="audit"), cfg)
    cfg = RunConfig()
    cfg.runtime.execution = "blnd"
    with pytest.raises(ConfigError, match="runtime.execution"):
        run_mode(argparse.Namespace(mode="synth"), cfg)
    cfg = RunConfig()
    cfg.synthetic.task.tracking_tau_s = 0.0
    with pytest.raises(ConfigError, match="synthetic.task: tracking_tau_s"):
        run_mode(argparse.Namespace(mode="synth"), cfg)
    cfg = RunConfig()
    cfg.runtime.blend_decay = float("nan")
    with pytest.raises(ConfigError, match="runtime.blend_decay must be finite"):
        run_mode(argparse.Namespace(mode="synth"), cfg)


def test_a_nan_written_in_yaml_is_refused_and_every_perturbation_level_is_a_valid_task(tmp_path):
    from vla_lib.data.perturbations import apply_perturbation, perturbation_levels

    path = tmp_path / "p.yaml"
    path.write_text("runtime:\n  blend_decay: .nan\n")
    with pytest.raises(ConfigError, match="runtime.blend_decay must be finite"):
        RunConfig.from_yaml(path)
    cfg = RunConfig.from_dict({"synthetic": {"scenario": "sensor_task"}})
    for family, level in perturbation_levels():  # the robustness matrix's overrides pass the task's checks
        apply_perturbation(cfg, family, level)


def test_a_derived_value_of_a_section_built_alone_is_refused_in_one_line(tmp_path):
    from vla_lib.config_sections import DataConfig

    alone = DataConfig(root=str(tmp_path))
    with pytest.raises(ConfigError, match="data.history_steps is derived from the model section"):
        alone.derived("history_steps")
    assert RunConfig.from_dict({"model": {"history_steps": 3}}).data.derived("history_steps") == 3


def test_one_dotted_key_helper_reads_and_writes_dicts_and_dataclasses():
    from vla_lib.dotted import flatten, get_dotted, set_dotted

    tree = {"train": {"lr": 1e-3}}
    set_dotted(tree, "runtime.limits.force_limit_n", 2.0, create=True)
    assert get_dotted(tree, "runtime.limits.force_limit_n") == 2.0 and get_dotted(tree, "train.lr") == 1e-3
    assert flatten({**tree, "data": {"clock_offsets": {"s1": 0.1}}}, keep=("clock_offsets",)) == {
        "train.lr": 1e-3, "runtime.limits.force_limit_n": 2.0, "data.clock_offsets": {"s1": 0.1}}
    with pytest.raises(KeyError):
        set_dotted(tree, "sweep.grid", {})  # no level made unless asked
    cfg = RunConfig()
    set_dotted(cfg, "runtime.limits.force_limit_n", 2.5)
    assert get_dotted(cfg, "runtime.limits.force_limit_n") == 2.5
    with pytest.raises(ConfigError, match="unknown parameter 'train.no_such_key'"):
        cfg.with_overrides({"train.no_such_key": 1})
    assert cfg.with_overrides({"runtime.limits.force_limit_n": 3.0}).runtime.limits.force_limit_n == 3.0


def test_the_sensor_gap_must_be_below_the_staleness_age_and_the_sensor_model_finite():
    with pytest.raises(ConfigError, match="max_sensor_gap_s"):
        RunConfig.from_dict({"runtime": {"limits": {"max_sensor_gap_s": 0.3}}})
    with pytest.raises(ConfigError, match="sensor_model.speckle must be finite"):
        RunConfig.from_dict({"synthetic": {"task": {"sensor_model": {"speckle": float("inf")}}}})


def test_the_contact_memory_needs_anchors_on_the_control_ticks():
    RunConfig.from_dict({"model": {"contact_memory": True}})  # anchors every 0.1 s, the control period
    with pytest.raises(ConfigError, match="contact_memory needs data.anchor_stride_s = data.action_dt_s"):
        RunConfig.from_dict({"model": {"contact_memory": True}, "data": {"anchor_stride_s": 0.05}})
    RunConfig.from_dict({"data": {"anchor_stride_s": 0.05}})  # without the memory any stride
    with pytest.raises(ConfigError, match="contact_memory needs data.sensor_enabled"):
        RunConfig.from_dict({"model": {"contact_memory": True}, "data": {"sensor_enabled": False}})
