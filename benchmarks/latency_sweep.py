"""The published latency sweep for the VL update (1, 2, 3, 5 views x 1280x720 ... 480x270) on this machine, with
the backbone as configured (CUDA: the fast vision path unless --stock), plus CPU preparation per update.

    python benchmarks/latency_sweep.py --random-weights      # the published 3B architecture on a GPU
"""
from __future__ import annotations

import argparse

import torch

from vla_lib.config import BackboneConfig, EvalConfig
from vla_lib.evaluation.latency import latency_sweep
from vla_lib.vlm.interface import load_backbone


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--random-weights", action="store_true")
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--stock", action="store_true", help="transformers' own vision attention")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    ev = EvalConfig()
    bb = load_backbone(BackboneConfig(name_or_path=args.model, random_weights=args.random_weights,
                                      fast_vision="off" if args.stock else "auto"))
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(f"{name}, {bb.dtype}, {bb.describe()}")
    table = latency_sweep(bb, ev.latency_views, ev.latency_resolutions, args.repeats, 2)
    print(table.to_string(index=False, float_format=lambda x: f"{x:.1f}"))


if __name__ == "__main__":
    main()
