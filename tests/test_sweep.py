"""The sweep: a grid expands into member parameter files sharing the sessions and the VL cache; a sweep killed
mid-way continues with what is left; the collected table aggregates over seeds."""
import json
from pathlib import Path

import pytest
import yaml

from vla_lib import sweep
from vla_lib.sweep import run
from vla_lib.config import RunConfig
from vla_lib.errors import ConfigError


def _base(tmp_path):
    return {"run_name": "demo", "output_root": str(tmp_path / "outputs"),
            "data": {"root": "sessions_here"}, "cache": {"dir": "one_cache"},
            "sweep": {"name": "s", "grid": {"data.sensor_enabled": [True, False], "train.seed": [0, 1, 2]},
                      "overrides": {"train.epochs": 3}}}


def test_grid_expands_into_members_sharing_data_and_cache(tmp_path):
    members = sweep.expand(_base(tmp_path))
    assert [m for m, _ in members] == ["sensor_on-seed0", "sensor_on-seed1", "sensor_on-seed2",
                                       "sensor_off-seed0", "sensor_off-seed1", "sensor_off-seed2"]
    cfgs = [RunConfig.from_dict(v) for _, v in members]
    assert {c.cache.dir for c in cfgs} == {"one_cache"} and {c.data.root for c in cfgs} == {"sessions_here"}
    assert len({c.train.output_dir for c in cfgs}) == 6 and len({str(c.run_dir) for c in cfgs}) == 6
    assert all(c.train.epochs == 3 and c.sweep.grid == {} and c.cache.allow_inline_encoding for c in cfgs)
    assert [c.data.sensor_enabled for c in cfgs] == [True] * 3 + [False] * 3
    assert [c.train.seed for c in cfgs] == [0, 1, 2] * 2
    assert cfgs[4].run_dir == Path(tmp_path / "outputs" / "s" / "sensor_off-seed1")
    # the weightless predictors (the same episodes give the same results) once per evaluation setting, not per seed
    assert ["scripted" in c.closed_loop.predictors for c in cfgs] == [True] + [False] * 5
    base = _base(tmp_path)
    base["sweep"]["grid"] = {"closed_loop.seed": [1000, 2000], "train.seed": [0, 1]}  # other episodes: run again
    cfgs = [RunConfig.from_dict(v) for _, v in sweep.expand(base)]
    assert ["scripted" in c.closed_loop.predictors for c in cfgs] == [True, False, True, False]


def test_bad_grid_key_fails_early(tmp_path):
    base = _base(tmp_path)
    base["sweep"]["grid"] = {"train.sede": [0, 1]}
    with pytest.raises(Exception, match="sede"):
        sweep.expand(base)


def test_killed_sweep_continues_with_what_is_left(tmp_path, monkeypatch):
    import papermill

    (tmp_path / "params").mkdir()
    (tmp_path / "vla_lib").mkdir()
    (tmp_path / "params" / "p.yaml").write_text(yaml.safe_dump(_base(tmp_path)))
    monkeypatch.chdir(tmp_path)
    ran = []

    def fake_execute(src, dst, parameters, **kw):
        cfg = RunConfig.from_yaml(tmp_path / parameters["params_file"])
        if len(ran) == 2 and not killed:
            killed.append(cfg.run_name)
            raise KeyboardInterrupt  # killed mid-way through the third member
        ran.append(cfg.run_name)
        run.mark_done(cfg, {})

    killed = []
    monkeypatch.setattr(papermill, "execute_notebook", fake_execute)
    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep("params/p.yaml", log=lambda *a: None)
    assert ran == ["sensor_on-seed0", "sensor_on-seed1"]
    rows = sweep.run_sweep("params/p.yaml", log=lambda *a: None)
    assert ran == ["sensor_on-seed0", "sensor_on-seed1", "sensor_on-seed2", "sensor_off-seed0", "sensor_off-seed1",
                   "sensor_off-seed2"]
    assert [r["status"] for r in rows] == ["skipped (done)"] * 2 + ["ran"] * 4


def test_a_done_member_with_other_settings_is_refused_not_reused(tmp_path, monkeypatch):
    import papermill

    (tmp_path / "params").mkdir()
    (tmp_path / "vla_lib").mkdir()
    base = _base(tmp_path)
    base["sweep"]["grid"] = {"train.seed": [0]}
    (tmp_path / "params" / "p.yaml").write_text(yaml.safe_dump(base))
    monkeypatch.chdir(tmp_path)
    ran = []

    def fake_execute(src, dst, parameters, **kw):  # run_member's marker
        cfg = RunConfig.from_yaml(tmp_path / parameters["params_file"])
        ran.append(cfg.run_name)
        run.mark_done(cfg, {"best_val": 0.1})

    monkeypatch.setattr(papermill, "execute_notebook", fake_execute)
    sweep.run_sweep("params/p.yaml", log=lambda *a: None)
    base["train"] = {"num_workers": 0}  # logistics: the done member stands
    (tmp_path / "params" / "p.yaml").write_text(yaml.safe_dump(base))
    assert [r["status"] for r in sweep.run_sweep("params/p.yaml", log=lambda *a: None)] == ["skipped (done)"]
    for section, change in (("model", {"history_steps": 2}), ("closed_loop", {"episodes": 3}),
                            ("train", {"max_steps": 5}), ("data", {"root": "other_sessions"})):
        edited = {**base, section: change}  # what the member trained on, or was judged on
        (tmp_path / "params" / "p.yaml").write_text(yaml.safe_dump(edited))
        with pytest.raises(ConfigError, match=f"{section}.*sweep.name"):
            sweep.run_sweep("params/p.yaml", log=lambda *a: None)
    done = next((tmp_path / "outputs" / "s").glob(f"*/{sweep.DONE}"))
    marker = json.loads(done.read_text())
    assert marker["best_val"] == 0.1 and marker["run_config"]["train"]["seed"] == 0
    (tmp_path / "params" / "p.yaml").write_text(yaml.safe_dump(base))
    done.write_text("{}")  # a marker written before the settings were stored, and no params.yaml beside it
    with pytest.raises(ConfigError, match="unknown"):
        sweep.run_sweep("params/p.yaml", log=lambda *a: None)
    assert len(ran) == 1


def test_collect_and_verdict(tmp_path, monkeypatch):
    (tmp_path / "params").mkdir()
    (tmp_path / "vla_lib").mkdir()
    base = _base(tmp_path)
    (tmp_path / "params" / "p.yaml").write_text(yaml.safe_dump(base))
    monkeypatch.chdir(tmp_path)
    for member, values in sweep.expand(base):
        cfg = RunConfig.from_dict(values)
        on, seed = cfg.data.sensor_enabled, cfg.train.seed
        Path(cfg.train.output_dir).mkdir(parents=True)
        Path(cfg.train.output_dir, "metrics.jsonl").write_text("\n".join(json.dumps(
            {"epoch": e, "train/loss_epoch": 1.0 / e, "val/loss_epoch": 1.2 / e}) for e in (1, 2, 3)))
        closed = {"policy": {"success_rate": 0.9 + 0.05 * seed if on else 0.2, "depth_error_mm": 0.2 if on else 1.5,
                             "peak_force_n": 0.8, "episodes": 20},
                  "policy_no_sensor": {"success_rate": 0.2, "depth_error_mm": 1.6, "peak_force_n": 0.8, "episodes": 20},
                  "scripted": {"success_rate": 0.1, "depth_error_mm": 2.0, "peak_force_n": 0.9, "episodes": 20}}
        offline = {"predictors": {"policy": {"mse": 0.01}, "policy_no_sensor": {"mse": 0.02}}}
        Path(cfg.run_dir, "metrics.json").write_text(json.dumps({"offline": offline, "closed_loop": closed}))
        Path(cfg.run_dir, sweep.DONE).write_text(json.dumps({"best_val": 0.4}))
    got = sweep.collect("params/p.yaml")
    assert len(got["table"]) == 6 and set(got["curves"].member) == {m for m, _ in sweep.expand(base)}
    agg = got["mean_std"]
    assert agg.loc[True, ("policy/success_rate", "mean")] == pytest.approx(0.95)
    assert agg.loc[True, ("policy/success_rate", "count")] == 3
    v = sweep.verdict(got, RunConfig.from_dict(base))
    assert v["members"] == 3 and v["seeds"] == [0, 1, 2] and v["episodes"] == 20 and v["groups"] == ["all"]
    assert v["success_rate_mean"] == pytest.approx(0.95) and v["ablation_error_ratio_mean"] == pytest.approx(8.0)
    assert v["target_success_met"] and v["target_ablation_met"] and v["target_seeds_met"]
    assert v["trained_without_sensor_success_rate_mean"] == pytest.approx(0.2)
    assert "0.950 ± 0.050 (n=3)" in sweep.mean_std_table(got, ["policy/success_rate"]).loc[True].iloc[0]


def test_verdict_counts_seeds_not_runs_when_the_grid_has_another_axis():
    """augment off/on x 3 seeds: 6 runs of 3 seeds in two groups (the robustness sweep), not 6 seeds."""
    import pandas as pd

    rows = [{"member": f"m{a}{s}", "train.seed": s, "augment.enabled": a, "policy/success_rate": 1.0,
             "policy/depth_error_mm": 0.1, "policy_no_sensor/depth_error_mm": 1.0, "policy/episodes": 5}
            for a in (False, True) for s in (0, 1, 2)]
    v = sweep.verdict({"table": pd.DataFrame(rows), "grid": ["augment.enabled", "train.seed"]}, None)
    assert v["members"] == 6 and v["seeds"] == [0, 1, 2] and len(v["groups"]) == 2
