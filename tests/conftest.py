"""Shared fixtures: a small synthetic dataset written once per test session (both recorder layouts)."""
import shutil
from pathlib import Path

import pytest

from vla_lib.config import RunConfig, SyntheticConfig
from vla_lib.data.synthetic import generate_dataset

REPO = Path(__file__).resolve().parents[1]


def small_synthetic(out_dir: Path, **kw) -> SyntheticConfig:
    values = dict(out_dir=str(out_dir), num_sensor_sessions=2, num_nosensor_sessions=2, duration_s=6.0,
                  image_width=320, image_height=180, seed=3)
    values.update(kw)
    return SyntheticConfig(**values)


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sessions")
    generate_dataset(small_synthetic(root))
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
