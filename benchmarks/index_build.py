"""Time building the sample index over many synthetic sessions (issue: 40 sessions x 60 s in seconds).

    .venv/bin/python benchmarks/index_build.py --sessions 40 --duration 60

Sessions are written once under outputs/bench_sessions (small images: only the index is timed, not JPEG decoding).
"""
import argparse
import time
from pathlib import Path

from vla_lib.config import RunConfig, SyntheticConfig
from vla_lib.data.samples import SampleDataset, build_index
from vla_lib.sim.demonstrations import write_dataset

p = argparse.ArgumentParser()
p.add_argument("--sessions", type=int, default=40)
p.add_argument("--duration", type=float, default=60.0)
p.add_argument("--out", default="outputs/bench_sessions")
args = p.parse_args()
root = Path(args.out)
if not root.exists():
    t = time.time()
    write_dataset(SyntheticConfig(out_dir=str(root), num_sensor_sessions=args.sessions, num_nosensor_sessions=0,
                                  duration_s=args.duration, image_width=64, image_height=36))
    print(f"generated {args.sessions} sessions x {args.duration:.0f} s in {time.time() - t:.1f} s")
cfg = RunConfig().data
cfg.root = str(root)
t = time.time()
index = build_index(cfg)
build_s = time.time() - t
ds = SampleDataset(index, cfg)
t = time.time()
n = 2000
for i in range(0, len(ds), max(1, len(ds) // n)):
    ds[i]
per_sample_ms = (time.time() - t) / min(n, len(ds)) * 1e3
print(f"index: {len(index.sessions)} sessions, {len(index)} samples built in {build_s:.2f} s; "
      f"loading one sample (sensor window from the memory map): {per_sample_ms:.2f} ms")
