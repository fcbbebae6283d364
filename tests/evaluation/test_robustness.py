"""The closed-loop robustness matrix: its conditions come from PERTURBATIONS (a family added there joins it), one
run's matrix lands in metrics.json, a sweep's members aggregate into mean ± std over seeds per group (the weightless
demonstrator, run once, in every group), the targets per cell, and the heat map's shape."""
import json
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import yaml

from vla_lib import sweep
from vla_lib.config import RunConfig
from vla_lib.data.perturbations import PERTURBATIONS, TASK
from vla_lib.errors import ConfigError
from vla_lib.evaluation import robustness as rb
from vla_lib.evaluation.closed_loop import run_closed_loop

matplotlib.use("Agg")


def test_conditions_levels_and_unknown_names():
    families = list(PERTURBATIONS)
    default = RunConfig().closed_loop.robustness.conditions()
    assert default == [(f, next(iter(PERTURBATIONS[f]))) for f in families]  # every family, its first level
    cfg = RunConfig.from_dict({"closed_loop": {"robustness": {"families": ["noise", "stiffness"],
                                                              "levels": {"stiffness": ["stiff", "very_stiff"]}}}})
    assert cfg.closed_loop.robustness.conditions() == [("noise", "x2"), ("stiffness", "stiff"),
                                                       ("stiffness", "very_stiff")]
    with pytest.raises(ConfigError, match="noise/x5"):
        RunConfig.from_dict({"closed_loop": {"robustness": {"levels": {"noise": ["x5"]}}}})
    with pytest.raises(ConfigError, match="gravity"):
        RunConfig.from_dict({"closed_loop": {"robustness": {"families": ["gravity"]}}})


def test_a_family_added_in_one_place_joins_the_matrix(tmp_path, monkeypatch):
    # the one change: an entry in PERTURBATIONS (a force limit the demonstrator's contact always crosses)
    monkeypatch.setitem(PERTURBATIONS, "brittle", {"very": {TASK + "force_limit_n": 0.05}})
    cfg = RunConfig.from_dict({"output_root": str(tmp_path), "run_name": "rb",
                               "synthetic": {"scenario": "sensor_task", "image_width": 64, "image_height": 36},
                               "data": {"views": ["View1_left", "View2_left"]},
                               "closed_loop": {"episodes": 1, "seed": 500, "predictors": ["demonstrator"],
                                               "robustness": {"enabled": True, "families": ["brittle"]}}})
    assert RunConfig().closed_loop.robustness.conditions()[-1] == ("brittle", "very")  # by itself in the default
    run_closed_loop(cfg, log=lambda *a: None)
    matrix = json.loads((tmp_path / "rb" / "metrics.json").read_text())["robustness"]
    assert list(matrix) == ["nominal", "brittle/very"]
    assert matrix["nominal"]["demonstrator"]["success_rate"] == 1.0
    assert matrix["brittle/very"]["demonstrator"]["success_rate"] == 0.0  # the perturbation was applied
    assert set(matrix["nominal"]["demonstrator"]) == set(rb.CELL)


def _cell(success, err, force=1.0):
    return {"success_rate": success, "depth_error_mm": err, "peak_force_n": force, "peak_force_n_max": force + 0.5,
            "episodes": 4, "stopped_episodes": 0}


def _write_member(cfg, matrix):
    Path(cfg.train.output_dir).mkdir(parents=True)
    Path(cfg.train.output_dir, "metrics.jsonl").write_text(json.dumps(
        {"epoch": 1, "train/loss_epoch": 1.0, "val/loss_epoch": 1.1}))
    offline = {"predictors": {"policy": {"mse": 0.01}, "policy_no_sensor": {"mse": 0.02}}}
    Path(cfg.run_dir, "metrics.json").write_text(json.dumps({"offline": offline, "robustness": matrix}))
    Path(cfg.run_dir, sweep.DONE).write_text(json.dumps({"best_val": 0.5}))


def test_sweep_members_aggregate_to_mean_std_per_group(tmp_path, monkeypatch):
    (tmp_path / "vla_lib").mkdir()  # repo_root: the members' folders under tmp_path
    monkeypatch.chdir(tmp_path)
    base = {"run_name": "rb", "output_root": "outputs",
            "closed_loop": {"predictors": ["policy", "policy_no_sensor", "demonstrator"]},
            "sweep": {"name": "s", "grid": {"augment.enabled": [False, True], "train.seed": [0, 1, 2]}}}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(base))
    members = sweep.expand(base)
    # augmentation changes only the weights: the demonstrator runs once in the whole sweep
    assert [m for m, _ in members][:2] == ["augment_off-seed0", "augment_off-seed1"]
    assert ["demonstrator" in v["closed_loop"]["predictors"] for _, v in members] == [True] + [False] * 5
    for member, values in members:
        cfg = RunConfig.from_dict(values)
        on, seed = cfg.augment.enabled, cfg.train.seed
        policy = (1.0, 0.1 + 0.1 * seed) if on else (0.5 + 0.25 * (seed == 2), 0.2)  # off: 0.5, 0.5, 0.75
        matrix = {c: {"policy": _cell(*policy), "policy_no_sensor": _cell(0.0, 0.6)} for c in ("nominal", "noise/x4")}
        if "demonstrator" in cfg.closed_loop.predictors:  # the first member only (weightless)
            matrix["nominal"]["demonstrator"] = _cell(1.0, 0.05)
            matrix["noise/x4"]["demonstrator"] = _cell(0.5, 0.9)
        _write_member(cfg, matrix)
    collected = sweep.collect("p.yaml")
    assert sweep.robustness_summary({**collected, "robustness": {}}) == {}  # no member ran one: notebook 05 skips
    summary = sweep.robustness_summary(collected)
    assert list(summary) == ["augment_off", "augment_on"]
    off, on = summary["augment_off"]["nominal"], summary["augment_on"]["nominal"]
    assert list(off) == ["policy", "policy_no_sensor", "demonstrator"]
    assert off["policy"]["n_seeds"] == 3 and off["policy"]["success_rate_mean"] == pytest.approx(7 / 12)
    assert off["policy"]["success_rate_std"] == pytest.approx(np.std([0.5, 0.5, 0.75], ddof=1))
    assert on["policy"]["depth_error_mm_mean"] == pytest.approx(0.2)
    assert on["policy"]["depth_error_mm_std"] == pytest.approx(0.1)
    assert on["policy"]["peak_force_n_max"] == 1.5 and on["policy"]["episodes"] == 4
    assert on["demonstrator"] == off["demonstrator"] and on["demonstrator"]["n_seeds"] == 1
    goals = rb.targets(summary)
    assert goals["augment_on"]["cells"]["nominal"] == {"success_met": True, "ablation_ratio": pytest.approx(3.0),
                                                       "ablation_met": True}
    assert goals["augment_off"]["cells"]["nominal"]["success_met"] is False
    assert goals["augment_off"]["cells"]["noise/x4"]["success_met"] is None  # the demonstrator failed: not judged
    assert goals["augment_off"]["success_met_cells"] == "0/1" and goals["augment_on"]["ablation_met_cells"] == "2/2"


def test_heatmap_rows_conditions_columns_predictor_by_group():
    stats = {"success_rate_mean": 0.9, "success_rate_std": 0.1, "depth_error_mm_mean": 0.1, "depth_error_mm_std": 0.0,
             "n_seeds": 3}
    conditions = ["nominal", "noise/x4", "stiffness/stiff"]
    summary = {g: {c: {p: stats for p in ("policy", "policy_no_sensor", "demonstrator")} for c in conditions}
               for g in ("augment_off", "augment_on")}
    fig = rb.plot_heatmap(summary)
    ax = fig.axes[0]
    assert ax.images[0].get_array().shape == (3, 5)  # the demonstrator (weightless) one column
    assert [t.get_text() for t in ax.get_yticklabels()] == conditions
    assert [t.get_text() for t in ax.get_xticklabels()] == [
        "policy\naugment_off", "policy\naugment_on", "policy_no_sensor\naugment_off", "policy_no_sensor\naugment_on",
        "demonstrator"]
    assert sum(t.get_text() == "0.90\n± 0.10" for t in ax.texts) == 15
    assert rb.table(summary).shape == (3, 5)


def test_the_params_file_runs_the_matrix_the_issue_asks_for():
    cfg = RunConfig.from_yaml(Path(__file__).resolve().parents[2] / "params/robustness.yaml")
    assert cfg.closed_loop.robustness.enabled
    assert len({family for family, _ in cfg.closed_loop.robustness.conditions()}) >= 6
    assert {"policy", "policy_no_sensor", "demonstrator"} <= set(cfg.closed_loop.predictors)
    assert cfg.sweep.grid["augment.enabled"] == [False, True] and len(cfg.sweep.grid["train.seed"]) >= 3
    assert cfg.model.contact_memory  # the demo's policy as shipped
    without = RunConfig.from_yaml(Path(__file__).resolve().parents[2] / "params/robustness_no_contact.yaml")
    assert not without.model.contact_memory and without.sweep.name != cfg.sweep.name
    assert without.closed_loop.robustness == cfg.closed_loop.robustness and without.sweep.grid == cfg.sweep.grid


def test_the_rich_variant_trains_on_rich_sessions_of_its_own_and_keeps_the_interface_levels():
    """params/robustness_rich.yaml: rich training sessions in their own folder (the demo's stay nominal), the same
    matrix; on top of the rich model an extra_interfaces level still means one more interface at its named depth."""
    from vla_lib.data.perturbations import apply_perturbation
    from vla_lib.data.tissue import sample_tissue

    params = Path(__file__).resolve().parents[2] / "params"
    rich, base = (RunConfig.from_yaml(params / f) for f in ("robustness_rich.yaml", "robustness.yaml"))
    assert rich.synthetic.task.sensor_model.preset == "rich" and base.synthetic.task.sensor_model.preset == "nominal"
    assert rich.data.root == rich.synthetic.out_dir != base.synthetic.out_dir
    assert rich.sweep.name != base.sweep.name and rich.run_name != base.run_name
    assert rich.closed_loop.robustness == base.closed_loop.robustness and rich.sweep.grid == base.sweep.grid
    named = {"film_close": (0.5, 0.8), "layer_shallow": (-1.0, -0.5)}  # the extra interface's height above the target
    for level, (lo, hi) in named.items():
        model = apply_perturbation(rich, "extra_interfaces", level).synthetic.task.sensor_model
        assert model.params()["speckle"] > 0  # still the rich model underneath
        for seed in range(1000, 1005):
            heights = sample_tissue(model, seed).heights_mm
            assert len(heights) == 2 and 0.0 in heights
            assert lo <= sum(heights) <= hi, (level, heights)
