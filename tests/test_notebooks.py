"""The notebooks run headless under papermill on small parameters (as the demo runs them)."""
from pathlib import Path

import nbformat
import papermill as pm
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def _images(notebook: Path) -> int:
    """Figures embedded in an executed notebook (they must be there even with MPLBACKEND=Agg)."""
    nb = nbformat.read(notebook, as_version=4)
    return sum("image/png" in out.get("data", {}) for cell in nb.cells for out in cell.get("outputs", []))


def _params(tmp_path: Path) -> dict:
    params = yaml.safe_load((REPO / "params/ci.yaml").read_text())
    params["output_root"] = str(tmp_path)
    params["synthetic"]["out_dir"] = params["data"]["root"] = str(tmp_path / "sessions")
    params["cache"]["dir"] = str(tmp_path / "vl_cache")
    params["train"]["output_dir"] = str(tmp_path / "train")
    return params


@pytest.fixture(autouse=True)
def headless(monkeypatch):
    """As on a headless machine and in the demo: figures must still be embedded in the executed notebooks."""
    monkeypatch.setenv("MPLBACKEND", "Agg")


@pytest.mark.slow
def test_notebook_01_runs_under_papermill(tmp_path):
    params = _params(tmp_path)
    out = tmp_path / "01.ipynb"
    pm.execute_notebook(str(REPO / "notebooks/01_dataset_audit.ipynb"), str(out),
                        parameters=params, cwd=str(REPO), kernel_name="python3",
                        progress_bar=False)
    audit_dir = tmp_path / "ci" / "01_audit"
    summary = yaml.safe_load((audit_dir / "audit.json").read_text())
    assert summary["sessions"] == 4 and len(summary["added_lines"]) == 4
    assert any("[Priority 2x] Added: recv_all_" in line and "WITH sensor" in line for line in summary["added_lines"])
    for png in ["sensor_window", "camera_timelines", "action_deltas", "sample", "staleness_coverage", "mmode"]:
        assert (audit_dir / f"{png}.png").stat().st_size > 10_000
    assert (audit_dir / "audit.csv").exists()
    assert _images(out) >= 6


@pytest.mark.quality  # 45 s: the quality gate runs it; notebooks 01, 05 and 06 run in the suite
def test_notebooks_02_to_04_run_under_papermill(tmp_path):
    params = _params(tmp_path)
    for name in ["01_dataset_audit", "02_vl_cache", "03_train", "04_eval_latency"]:
        pm.execute_notebook(str(REPO / f"notebooks/{name}.ipynb"), str(tmp_path / f"{name}.ipynb"),
                            parameters=params, cwd=str(REPO),
                            kernel_name="python3", progress_bar=False)
    cache = yaml.safe_load((tmp_path / "ci/02_cache/cache.json").read_text())
    assert cache["verify_problems"] == [] and cache["hits"] > 0 and cache["tokens_per_view"] == 66
    train = yaml.safe_load((tmp_path / "ci/03_train/train.json").read_text())
    assert train["epochs"] == 2
    assert (tmp_path / "train/checkpoints/qwen_vla_sensor_final.pt").exists()
    assert (tmp_path / "ci/03_train/training_curves.png").stat().st_size > 10_000
    metrics = yaml.safe_load((tmp_path / "ci/metrics.json").read_text())
    assert set(metrics) == {"offline", "realtime", "latency"}
    assert set(metrics["offline"]["predictors"]) == {"policy", "policy_no_sensor", "zero", "train_mean", "last_delta"}
    assert metrics["realtime"]["action_steps"] >= 10 and len(metrics["latency"]["vl_update"]) == 4
    for png in ["first_action", "error_per_dimension", "error_per_horizon", "realtime", "latency"]:
        assert (tmp_path / f"ci/04_eval/{png}.png").stat().st_size > 10_000
    for name, figures in [("02_vl_cache", 1), ("03_train", 1), ("04_eval_latency", 5)]:
        assert _images(tmp_path / f"{name}.ipynb") >= figures, name
    ablation = metrics["offline"]["sensor_ablation"]
    assert ablation["samples"] > 0 and set(ablation["per_phase"]) <= {"home", "approach", "pause", "insert", "hold"}
