"""Shared fixtures: a small synthetic dataset written once per test session (both recorder layouts).

The suite asserts CPU fp32 behaviour (tolerances of 1e-4 and tighter; GPU paths are measured by benchmarks/), so it
hides any GPU, also from the subprocesses it starts, before torch initialises CUDA."""
import os

os.environ["CUDA_VISIBLE_DEVICES"] = ""

import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from vla_lib.config import RunConfig, SyntheticConfig  # noqa: E402
from vla_lib.sim.demonstrations import write_dataset  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def ci_config(data_root: Path, base: Path) -> RunConfig:
    """params/ci.yaml on the sessions under `data_root`, with the tiny VLM and the feature store under `base` (a
    test's temporary folder)."""
    cfg = RunConfig.from_yaml(REPO / "params/ci.yaml")
    cfg.data.root = str(data_root)
    cfg.backbone.tiny_model_dir = str(base / "tiny")
    cfg.cache.dir = str(base / "cache")
    return cfg


def run_cli(args, out_dir, extra=(), launcher=(sys.executable, "-m", "vla_lib"), wait=True, timeout=600):
    """`python -m vla_lib ARGS --output-dir OUT_DIR EXTRA` from the repository root, deterministic on the CPU: its
    output (asserting success), or the running process (`wait=False`, e.g. to kill it). The run's folder is under
    OUT_DIR too (output_root), so a test never writes into the repository's outputs/."""
    if not any(str(a).startswith("output_root=") for a in (*args, *extra)):
        extra = (*extra, "--set", f"output_root={out_dir}")
    cmd = [*launcher, *args, "--output-dir", str(out_dir), *extra]
    env = {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}
    if wait:
        done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return done.stdout + done.stderr
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def small_synthetic(out_dir: Path, **kw) -> SyntheticConfig:
    values = dict(out_dir=str(out_dir), num_sensor_sessions=2, num_nosensor_sessions=2, duration_s=6.0,
                  image_width=320, image_height=180, seed=3)
    values.update(kw)
    return SyntheticConfig(**values)


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sessions")
    write_dataset(small_synthetic(root))
    return root


@pytest.fixture
def data_cfg(synth_root):
    cfg = RunConfig().data
    cfg.root = str(synth_root)
    cfg.val_fraction = 0.5
    return cfg


@pytest.fixture
def session_copy(synth_root, tmp_path):
    """Copy one session of a given layout so that a test may damage it."""
    def copy(layout: str = "recv_all") -> Path:
        pattern = "*/recv_all_*" if layout == "recv_all" else "OCT_insertion/Captures*"
        src = sorted(synth_root.glob(pattern))[0]
        dst = tmp_path / src.parent.name / src.name
        shutil.copytree(src, dst)
        return dst
    return copy
