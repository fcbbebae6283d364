"""Sensor augmentation in a Stage-1 run: the training split augments, validation does not, and the checkpoints record
the section (a 1-epoch run of params/ci.yaml, in this process)."""
from dataclasses import asdict

import numpy as np
import pytest
import torch

from tests.conftest import ci_config
from vla_lib.data.samples import SampleDataset
from vla_lib.policy.checkpoint import CHECKPOINT_NAMES, load_checkpoint
from vla_lib.train import Trainer
from vla_lib.train_state import RunStateError, read_resume
from vla_lib.vlm.cache_build import build_cache


@pytest.fixture(scope="module")
def cached(synth_root, tmp_path_factory):
    """params/ci.yaml with augmentation on, its feature store built."""
    base = tmp_path_factory.mktemp("augment")
    cfg = ci_config(synth_root, base)
    build_cache(cfg, log=lambda *a: None)
    return cfg.with_overrides({"augment.enabled": True, "augment.gain": 0.2, "train.wandb_mode": "disabled",
                               "train.batch_size": 8})


def _train(cfg, out, stop_at: int = 0) -> Trainer:
    """`training.train`'s loop in this process; `stop_at`: the optimiser step a first attempt stops at."""
    cfg = cfg.with_overrides({"output_root": str(out), "train.output_dir": str(out / "train"), "train.max_steps": stop_at})
    trainer = Trainer(cfg, log=lambda *a: None)
    trainer.setup()
    trainer.resume_or_start()
    while trainer.progress["epoch"] < cfg.train.epochs and not trainer.stopped:
        if trainer.train_epoch():
            trainer.end_epoch(trainer.validate())
    trainer.finish()
    return trainer


@pytest.fixture(scope="module")
def run(cached, tmp_path_factory):
    return _train(cached, tmp_path_factory.mktemp("augment_run"))


def _sensor_rows(samples: SampleDataset) -> list[int]:
    return [i for i in range(len(samples)) if samples.index.table.has_sensor[i]]


def test_the_training_split_augments_and_validation_does_not(run):
    train, val = run.loader.dataset.samples, run.val_set.samples
    assert train.augmentation is run.augmentation and val.augmentation is None
    assert run.augmentation.epoch == run.cfg.train.epochs - 1  # set at each epoch's start
    plain_train, plain_val = SampleDataset(train.index, train.cfg), SampleDataset(val.index, val.cfg)
    rows = _sensor_rows(train)
    assert rows and sum(not (train[i]["sensor"] == plain_train[i]["sensor"]).all() for i in rows) > len(rows) // 2
    for i in _sensor_rows(val):
        assert (val[i]["sensor"] == plain_val[i]["sensor"]).all() and (val[i]["sensor_mask"] ==
                                                                       plain_val[i]["sensor_mask"]).all()


def test_checkpoints_record_the_section_and_a_resume_keeps_it(run):
    for name in ("final", "best"):
        ckpt = load_checkpoint(run.ckpt_dir / CHECKPOINT_NAMES[name])
        assert ckpt.run_config["augment"] == asdict(run.cfg.augment) and ckpt.run_config["augment"]["enabled"]
    other = run.cfg.with_overrides({"augment.gain": 0.1})
    with pytest.raises(RunStateError, match="augment.gain"):
        read_resume(run.resume_file, other, 1)
    assert np.isfinite(run.progress["best_val"])


def test_a_resumed_run_sees_the_same_augmentations(cached, run, tmp_path):
    """Stopped in the second epoch, resumed by a new trainer: the weights of the uninterrupted run."""
    stopped = _train(cached, tmp_path, stop_at=run.steps_per_epoch + 2)
    assert stopped.stopped and stopped.progress["epoch"] == 1
    resumed = _train(cached, tmp_path)
    assert resumed.resume is not None and resumed.progress["epoch"] == cached.train.epochs
    a = load_checkpoint(run.ckpt_dir / CHECKPOINT_NAMES["final"]).heads.state_dict()
    b = load_checkpoint(resumed.ckpt_dir / CHECKPOINT_NAMES["final"]).heads.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)


def test_the_initial_weights_do_not_depend_on_an_inline_cache_build(synth_root, tmp_path):
    """A sweep's first member encodes the cache inline (it loads the VL model, drawing random numbers) and its
    reruns do not: the heads must start from the same weights either way."""
    cfg = ci_config(synth_root, tmp_path).with_overrides({"cache.allow_inline_encoding": True,
                                                          "train.wandb_mode": "disabled"})
    weights = []
    for name in ("inline", "cached"):  # the first builds the store, the second finds it
        run = cfg.with_overrides({"output_root": str(tmp_path / name), "train.output_dir": str(tmp_path / name)})
        trainer = Trainer(run, log=lambda *a: None)
        trainer.setup()
        weights.append({k: v.clone() for k, v in trainer.model_state().items()})
    for k in weights[0]:
        torch.testing.assert_close(weights[0][k], weights[1][k], rtol=0, atol=0, msg=k)


def test_a_run_stopped_before_validation_writes_strict_json(cached, tmp_path):
    """Stopped at its first optimiser step, no validation ran (best_val is still infinite): the summary and the
    metrics rows are strict JSON (null, never `Infinity`), which every JSON reader accepts."""
    import json

    def strict(name):
        raise ValueError(f"non-standard JSON constant {name}")

    trainer = _train(cached, tmp_path, stop_at=1)
    summary = json.loads((trainer.out / "train_summary.json").read_text(), parse_constant=strict)
    assert summary["best_val"] is None and not summary["finished"]
    for line in trainer.metrics_file.read_text().splitlines():
        json.loads(line, parse_constant=strict)
