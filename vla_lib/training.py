"""A training run, top to bottom, for either stage: `train(cfg)` picks the trainer that `train.training_stage` names
(Stage 1: `train.Trainer`, heads on cached features; Stage 2: `stage2.train_stage2.Stage2Trainer`, LoRA on the
backbone + heads) and runs the same loop."""
from __future__ import annotations

from vla_lib.stage2.train_stage2 import Stage2Trainer
from vla_lib.train import Trainer

TRAINERS = {"stage1": Trainer, "stage2": Stage2Trainer}


def train(cfg, log=print) -> dict:
    """The run folder, data, model and optimiser, resume, then epochs of (train, validate, checkpoint). Returns the
    run's summary (also written to `train_summary.json`)."""
    run = TRAINERS[cfg.train.training_stage](cfg, log)
    if run.finished_already():
        return run.existing_summary()
    run.setup()
    run.resume_or_start()
    while run.progress["epoch"] < cfg.train.epochs and not run.stopped:
        if run.train_epoch():  # False: train.max_steps stopped it mid-epoch (the resume state is saved)
            run.end_epoch(run.validate())
    return run.finish()
