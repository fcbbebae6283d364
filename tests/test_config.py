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
    with pytest.raises(ConfigError, match="Stage 1 only"):
        config_from_args(build_parser().parse_args(["--mode", "train", "--finetune-vl", "lora"]))
    with pytest.raises(ConfigError, match="unknown parameter"):
        config_from_args(build_parser().parse_args(["--mode", "train", "--set", "train.nope=1"]))


def test_yaml_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: many\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.*train.epochs"):
        RunConfig.from_yaml(bad)


def test_presets_fill_unset_fields_only():
    cfg = RunConfig.from_dict({"model": {"preset": "small", "expert_layers": 3}})
    assert cfg.model.sensor_dim == 128 and cfg.model.expert_layers == 3
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
