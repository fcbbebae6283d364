"""Notebook 05 runs headless: a short simulated replay, the report and the dashboard figure."""
import json

import papermill as pm
import pytest
import yaml

from tests.conftest import REPO


@pytest.mark.slow
def test_notebook_05_replays_and_plots(rig_root, tmp_path):
    params = yaml.safe_load((REPO / "params/ci.yaml").read_text())
    params["output_root"] = str(tmp_path)
    params["data"]["root"] = str(rig_root)
    params["backbone"]["tiny_model_dir"] = str(tmp_path / "tiny")
    params["train"]["output_dir"] = str(tmp_path / "train")  # no checkpoint there: random heads
    pm.execute_notebook(str(REPO / "notebooks/06_live_rig.ipynb"), str(tmp_path / "06.ipynb"),
                        parameters={**params, "replay_s": 3.0}, cwd=str(REPO),
                        kernel_name="python3", progress_bar=False)
    report = json.loads((tmp_path / "ci/live/report.json").read_text())
    assert report["actions_sent"] == 0 and report["action_steps"] >= 20 and report["lost"]["sensor"] == 0
    assert (tmp_path / "ci/live/live.png").stat().st_size > 20_000
