"""Stage-2 settings: the CLI flags, the pairing of finetune_vl and training_stage, resume of runs saved before the
Stage-2 fields existed."""
import pytest

from vla_lib.cli import build_parser, config_from_args
from vla_lib.config import ConfigError, RunConfig
from vla_lib.config import settings_changed


def test_stage2_flags_map_onto_the_config():
    cfg = config_from_args(build_parser().parse_args(
        ["--mode", "train", "--params", "params/demo.yaml", "--training-stage", "stage2", "--finetune-vl", "lora",
         "--stage1-checkpoint", "x.pt", "--vl-lr", "2e-5", "--set", "lora.r=8"]))
    assert (cfg.train.training_stage, cfg.train.finetune_vl, cfg.train.stage1_checkpoint) == ("stage2", "lora", "x.pt")
    assert cfg.train.vl_lr == 2e-5 and cfg.lora.r == 8 and cfg.lora.targets == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert RunConfig.from_yaml("params/demo_stage2.yaml").train.training_stage == "stage2"
    for bad in (["--finetune-vl", "lora"], ["--training-stage", "stage2"], ["--finetune-vl", "full"]):
        with pytest.raises(ConfigError):
            config_from_args(build_parser().parse_args(["--mode", "train", *bad]))


def test_a_run_saved_before_the_stage2_fields_resumes_but_a_changed_one_does_not():
    current = RunConfig().to_dict()
    old = {k: v for k, v in current.items() if k != "lora"}
    old["train"] = {k: v for k, v in current["train"].items() if k not in ("stage1_checkpoint", "vl_lr")}
    assert settings_changed(old, current) == []
    changed = RunConfig().with_overrides({"lora.r": 8}).to_dict()
    assert settings_changed(current, changed) == ["lora.r: 16 -> 8"]
    assert settings_changed(old, changed) == ["lora.r: None -> 8"]  # absent before, not at its default: a change
