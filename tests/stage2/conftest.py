"""A Stage-1 run on the shared synthetic sessions (tiny VLM, CI settings), the start of every Stage-2 test."""
import pytest

from tests.conftest import ci_config


@pytest.fixture(scope="session")
def stage1_run(synth_root, tmp_path_factory):
    """(Stage-2 RunConfig, the --set/flags that point the CLI at the same places, the Stage-1 best checkpoint)."""
    from vla_lib import training
    from vla_lib.vlm.cache_build import build_cache

    base = tmp_path_factory.mktemp("stage2")
    cfg = ci_config(synth_root, base)
    cfg.output_root = str(base / "outputs")
    cfg.train.output_dir = str(base / "stage1")
    cfg.train.epochs, cfg.train.batch_size = 1, 8
    build_cache(cfg, log=lambda *a: None)
    training.train(cfg, log=lambda *a: None)
    ckpt = base / "stage1/checkpoints/qwen_vla_sensor_best.pt"
    stage2 = cfg.with_overrides({"train.training_stage": "stage2", "train.finetune_vl": "lora",
                                 "train.stage1_checkpoint": str(ckpt), "train.output_dir": str(base / "s2"),
                                 "train.batch_size": 4, "train.lr": 1e-3, "train.vl_lr": 1e-2})
    flags = ["--params", "params/ci.yaml", "--data-root", str(synth_root), "--cache-dir", cfg.cache.dir,
             "--set", f"backbone.tiny_model_dir={cfg.backbone.tiny_model_dir}", "--set",
             f"output_root={cfg.output_root}", "--wandb-mode", "disabled", "--training-stage", "stage2",
             "--finetune-vl", "lora", "--stage1-checkpoint", str(ckpt)]
    return stage2, flags, ckpt
