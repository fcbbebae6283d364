"""Command line: `python -m vla_lib --mode MODE [--params file.yaml] [flags]`, also under `accelerate launch -m vla_lib`
and `torchrun -m vla_lib`.

Modes: synth (write synthetic sessions), audit, cache (build the VL feature store), verify (check the store),
train (Stage 1, or Stage 2 with --training-stage stage2 --finetune-vl lora), eval (offline metrics, real-time replay, latency -> outputs/<run>/metrics.json), closed_loop (the
checkpoint on held-out episodes of the simulated rig -> metrics.json["closed_loop"]), sweep (the `sweep:` grid through
papermill, resumable), demo (the notebooks via papermill), live (the real-time loop on the rig's endpoints from
`live:` in params, dry run unless --send-actions; --simulate-senders replays a recorded session over loopback ->
outputs/<run>/live/report.json).
The flags of the training commands in docs/training.md are accepted as written; each maps onto one field of the
same dataclass config the notebooks use (flags override the YAML). Unknown flags and bad values are errors.
"""
from __future__ import annotations

import argparse
import sys

from vla_lib.config import ConfigError, RunConfig

MODES = ("synth", "audit", "cache", "verify", "train", "eval", "closed_loop", "sweep", "demo", "live")

# flag -> (config fields it sets, type). A store_true flag has type None.
FLAGS: dict[str, tuple[tuple[str, ...], type | None]] = {
    "--sensor-enabled": (("data.sensor_enabled",), None),
    "--sensor-window-size": (("data.sensor_window_size",), int),
    "--sensor-temporal-length": (("model.sensor_length",), int),
    "--sensor-input-channels": (("model.sensor_channels",), int),
    "--sensor-output-dim": (("model.sensor_output_dim",), int),
    "--fusion-strategy": (("model.fusion",), str),
    "--image-resize-height": (("backbone.image_resize_height",), int),
    "--image-resize-width": (("backbone.image_resize_width",), int),
    "--model": (("backbone.name_or_path",), str),
    "--random-weights": (("backbone.random_weights",), None),
    "--finetune-vl": (("train.finetune_vl",), str),
    "--training-stage": (("train.training_stage",), str),
    "--batch-size": (("train.batch_size",), int),
    "--grad-accum-steps": (("train.grad_accum_steps",), int),
    "--lr": (("train.lr",), float),
    "--min-lr": (("train.min_lr",), float),
    "--sensor-lr": (("train.sensor_lr",), float),
    "--warmup-ratio": (("train.warmup_ratio",), float),
    "--hold-ratio": (("train.hold_ratio",), float),
    "--sensor-loss-weight": (("train.sensor_loss_weight",), float),
    "--epochs": (("train.epochs",), int),
    "--max-steps": (("train.max_steps",), int),
    "--save-every-steps": (("train.save_every_steps",), int),
    "--num-workers": (("train.num_workers", "cache.num_workers"), int),
    "--seed": (("train.seed",), int),
    "--output-dir": (("train.output_dir",), str),
    "--cache-dir": (("cache.dir",), str),
    "--data-root": (("data.root",), str),
    "--run-name": (("run_name",), str),
    "--wandb-mode": (("train.wandb_mode",), str),
    "--checkpoint": (("eval.checkpoint",), str),
    "--stage1-checkpoint": (("train.stage1_checkpoint",), str),
    "--vl-lr": (("train.vl_lr",), float),
    "--allow-inline-encoding": (("cache.allow_inline_encoding",), None),
    "--allow-backbone-mismatch": (("eval.allow_backbone_mismatch",), None),
    "--send-actions": (("live.send_actions",), None),
    "--simulate-senders": (("live.simulate_senders",), None),
    "--replay-session": (("live.replay_session",), str),
    "--duration": (("live.duration_s",), float),
    "--record": (("live.record",), None),
}


class _Parser(argparse.ArgumentParser):
    """One clear line and exit code 2 for a usage error (not a 30-line usage block first)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m vla_lib", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                allow_abbrev=False)  # --epoch must not silently mean --epochs
    p.add_argument("--mode", required=True, choices=MODES)
    p.add_argument("--params", help="YAML parameter file (sections as in params/demo.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="any other config field, e.g. --set data.anchor_stride_s=0.2 (YAML-typed value)")
    p.add_argument("--only", nargs="*", help="demo mode: run only these notebooks (e.g. 01 02)")
    for flag, (_, tp) in FLAGS.items():
        if tp is None:
            p.add_argument(flag, action="store_true", default=None)
        else:
            p.add_argument(flag, type=tp, default=None)
    return p


def config_from_args(args: argparse.Namespace) -> RunConfig:
    import yaml

    cfg = RunConfig.from_yaml(args.params) if args.params else RunConfig()
    overrides = {}
    for flag, (targets, _) in FLAGS.items():
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        if value is not None:
            overrides.update({t: value for t in targets})
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set expects SECTION.KEY=VALUE, got {item!r}")
        overrides[key] = yaml.safe_load(value)
    # finetune_vl and training_stage are checked together by the config (none + stage1, or lora + stage2)
    return cfg.with_overrides(overrides)


def main(argv: list[str] | None = None) -> int:
    """Expected failures (bad settings, a cache miss, a damaged store, bad data, a run folder that cannot be
    continued) end with one line naming the problem and the command that fixes it, and exit code 2."""
    from vla_lib.data.recorder_files import DataError
    from vla_lib.finite_guard import NonFiniteError
    from vla_lib.policy.checkpoint import CheckpointMismatchError
    from vla_lib.pipeline import NotebookError
    from vla_lib.train_state import RunStateError
    from vla_lib.vlm.feature_store import CacheMissError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(args)
        if args.mode in ("cache", "train", "demo"):
            from vla_lib.commands import check_same_run

            check_same_run(cfg)  # before anything is written: never repoint a finished run
        code = run_mode(args, cfg)
        if code == 0 and args.mode in ("cache", "train"):
            from vla_lib.commands import run_params_file

            run_params_file(cfg)  # the run's settings: any later step may read them with --params
        return code
    except (ConfigError, CacheMissError, DataError, CheckpointMismatchError, RunStateError, NotebookError,
            NonFiniteError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


_BUILD_MODES = ("synth", "audit", "demo", "cache", "verify", "train")  # the rest: eval, closed_loop, sweep, live


def run_mode(args, cfg) -> int:
    cfg.validate()  # every section, whatever the mode (a notebook or a caller may have changed it since it was built)
    if args.mode in _BUILD_MODES:
        return _run_build_mode(args, cfg)
    return _run_evaluation_mode(args, cfg)


def _run_build_mode(args, cfg) -> int:
    """The modes that make data, features or a trained policy: synth, audit, demo, cache, verify, train."""
    if args.mode == "synth":
        from vla_lib.pipeline import ensure_synthetic

        made = ensure_synthetic(cfg, force=True)
        print(f"wrote {len(made)} synthetic sessions under {cfg.synthetic.out_dir}")
    elif args.mode == "audit":
        from vla_lib.data.audit import audit_dataset, print_report, write_audit

        table, skipped, _ = audit_dataset(cfg.data)
        path = write_audit(cfg.run_dir / "01_audit", table, skipped)["path"]
        print_report(table, skipped, path)
    elif args.mode == "demo":
        from vla_lib.commands import run_params_file
        from vla_lib.pipeline import ensure_synthetic, run_notebooks

        ensure_synthetic(cfg)
        # the notebooks get these settings, flags and --set values included, not just the params file
        out = run_notebooks(str(run_params_file(cfg)), only=args.only)
        print(f"demo complete: {out}")
    elif args.mode == "cache":
        from vla_lib.vlm.cache_build import build_cache

        build_cache(cfg)
    elif args.mode == "verify":
        from vla_lib.vlm.cache_build import verify

        return verify(cfg)
    elif args.mode == "train":
        from vla_lib import training

        training.train(cfg)  # Stage 1 or Stage 2, as train.training_stage says
    return 0


def _run_evaluation_mode(args, cfg) -> int:
    """The modes that run a policy: eval, closed_loop, sweep, live (any other mode does nothing and returns 0)."""
    if args.mode == "eval":
        from vla_lib.evaluation import run
        from vla_lib.evaluation.offline import summary_table

        held = run.split(cfg)  # the recorded held-out sessions, indexed once for both evaluations
        result = run.run_offline(cfg, held=held)
        print(summary_table(result.metrics).to_string())
        policy = run.load_policy(cfg)
        print(run.run_realtime_replay(cfg, policy, held=held).summary)
        print(run.run_latency(cfg, policy)["table"].to_string())
        print(f"metrics: {cfg.run_dir / 'metrics.json'}")
    elif args.mode == "closed_loop":
        from vla_lib.evaluation.closed_loop import run_closed_loop

        run_closed_loop(cfg)
        print(f"metrics: {cfg.run_dir / 'metrics.json'} (closed_loop)")
    elif args.mode == "sweep":
        from vla_lib.sweep import run_sweep

        if not cfg.sweep.grid:
            raise ConfigError("--mode sweep needs a sweep grid (a params file with a sweep: section, or --set)")
        run_sweep(cfg)
    elif args.mode == "live":
        from vla_lib.live import run_live

        summary = run_live(cfg)
        keys = ("action_hz", "deadline_misses", "action_latency_ms_p50", "action_latency_ms_p99", "actions_sent",
                "actions_dry_run", "dropped", "lost")
        print({k: summary.get(k) for k in keys})
    return 0


if __name__ == "__main__":
    sys.exit(main())
