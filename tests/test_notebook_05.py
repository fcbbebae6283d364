"""Notebook 05 runs headless under papermill: with every member of the sweep already done it runs nothing, collects
the members, draws the figures (embedded in the executed notebook) and writes the verdict; where the members ran a
robustness matrix, its heat map too, and without one a note instead."""
import json
from pathlib import Path

import papermill as pm
import pytest
import yaml

from tests.evaluation.test_closed_loop import SensorReadingPolicy
from vla_lib import sweep
from vla_lib.config import RunConfig
from vla_lib.sweep.run import mark_done
from vla_lib.evaluation import robustness as rb
from vla_lib.evaluation.closed_loop import evaluate_closed_loop, load_results, save_results

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.parametrize("matrix", [False, True], ids=["plain", "robustness"])
def test_notebook_05_compares_done_members(tmp_path, matrix):
    params = yaml.safe_load((REPO / "params/demo.yaml").read_text())
    params["output_root"] = str(tmp_path)
    params["synthetic"].update(image_width=64, image_height=36)
    params["closed_loop"] = {"episodes": 2, "seed": 500, "plot_episodes": 2}
    params["sweep"]["grid"] = {"train.seed": [0, 1, 2]}
    params_file = tmp_path / "p.yaml"
    params_file.write_text(yaml.safe_dump(params))
    for member, values in sweep.expand(params):
        cfg = RunConfig.from_dict(values)
        closed = evaluate_closed_loop(cfg, SensorReadingPolicy(cfg.synthetic.task), log=lambda *a: None)
        Path(cfg.train.output_dir).mkdir(parents=True)
        Path(cfg.train.output_dir, "metrics.jsonl").write_text("\n".join(json.dumps(
            {"epoch": e, "train/loss_epoch": 1.0 / e, "val/loss_epoch": 1.1 / e}) for e in (1, 2)))
        offline = {"predictors": {"policy": {"mse": 0.01}, "policy_no_sensor": {"mse": 0.02}}}
        robust = {"robustness": {c: {p: rb._cell(m) for p, m in closed.metrics.items()}
                                 for c in ("nominal", "noise/x4")}} if matrix else {}  # the shape run_matrix writes
        Path(cfg.run_dir, "metrics.json").write_text(json.dumps({"offline": offline, "closed_loop": closed.metrics,
                                                                 **robust}))
        save_results(closed, Path(cfg.run_dir) / "closed_loop_results.json")
        assert Path(cfg.run_dir, "closed_loop_results_mmode.npz").exists()  # the episodes the M-mode view draws
        back = load_results(Path(cfg.run_dir) / "closed_loop_results.json")  # JSON, not pickle: the same results
        assert back.metrics == json.loads(json.dumps(closed.metrics)) and len(back.results) == len(closed.results)
        first = next(iter(closed.results))
        assert back.results[first][0].depth_error_mm == closed.results[first][0].depth_error_mm
        mark_done(cfg, {"best_val": 0.5})  # as run_member marks a member done
    out = tmp_path / "05.ipynb"
    pm.execute_notebook(str(REPO / "notebooks/05_compare_runs.ipynb"), str(out),
                        parameters={"params_file": str(params_file)}, cwd=str(REPO), kernel_name="python3",
                        progress_bar=False)
    nb = json.loads(out.read_text())
    images = [o for c in nb["cells"] for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 5 + matrix  # loss curves, closed-loop summary, traces, success by surface, M-mode, heat map
    printed = "".join("".join(o.get("text", "")) for c in nb["cells"] for o in c.get("outputs", []))
    assert ("heat map skipped" in printed) != matrix
    assert (tmp_path / "demo" / "05_compare" / "closed_loop_mmode.png").stat().st_size > 10_000
    compare = json.loads((tmp_path / "demo" / "05_compare" / "compare.json").read_text())
    v = compare["verdict"]
    assert v["members"] == 3 and v["episodes"] == 2 and v["success_rate_mean"] == 1.0 and v["target_ablation_met"]
    assert not v["target_seeds_met"]  # 2 episodes < 20
    assert "skipped (done)" in json.dumps(nb)
    summary = json.loads((tmp_path / "demo" / "metrics.json").read_text())["closed_loop"]
    assert summary["policy"]["episodes"] == 6 and summary["policy"]["success_rate"] == 1.0
    assert {"success_rate", "depth_error_mm", "peak_force_n", "episodes"} <= set(summary["scripted"])
    metrics = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    assert ("robustness" in metrics) == matrix
    if matrix:  # one group (seeds only), two conditions, the scripted descent run by the first member only
        assert list(metrics["robustness"]) == ["all"] and list(metrics["robustness"]["all"]) == ["nominal", "noise/x4"]
        assert metrics["robustness"]["all"]["nominal"]["policy"]["n_seeds"] == 3
        assert metrics["robustness"]["all"]["nominal"]["scripted"]["n_seeds"] == 1
        assert (tmp_path / "demo" / "05_compare" / "robustness_heatmap.png").exists()
