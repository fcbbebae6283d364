"""Shared fixtures: a small synthetic dataset written once per test session (both recorder layouts).

The suite asserts CPU fp32 behaviour (tolerances of 1e-4 and tighter; GPU paths are measured by benchmarks/), so it
hides any GPU, also from the subprocesses it starts, before torch initialises CUDA."""
import os

os.environ["CUDA_VISIBLE_DEVICES"] = ""

import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from vla_lib.config import RunConfig, SyntheticConfig  # noqa: E402
from vla_lib.sim.demonstrations import write_dataset  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


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
