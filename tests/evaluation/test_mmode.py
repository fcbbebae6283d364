"""Closed-loop episodes keep their M-mode data only where asked (the first episode of the predictors the view shows),
the data survive saving beside the results, and the view draws one episode per predictor side by side."""
import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402

from tests.evaluation.test_closed_loop import _cfg  # noqa: E402
from vla_lib.evaluation.closed_loop import evaluate_closed_loop, load_results, save_results  # noqa: E402
from vla_lib.evaluation.mmode import mmode_path, plot_closed_loop_mmode, shown  # noqa: E402


def test_kept_episodes_saved_and_drawn(tmp_path):
    cfg = _cfg(tmp_path)
    result = evaluate_closed_loop(cfg, predictors=["scripted", "demonstrator"], episodes=2, log=lambda *a: None)
    assert shown(["scripted", "x", "policy_no_sensor", "policy"]) == ["policy", "policy_no_sensor"]
    first, second = result.results["demonstrator"]
    assert second.sensor is None and first.sensor is not None  # only the drawn episode holds A-lines
    s = first.sensor
    assert s["alines"].shape[1] == 1025 and len(s["t"]) == len(s["force"]) == len(s["tip_z"]) <= 800
    assert s["alines"].dtype == np.float16 and s["t"][0] < 0 < s["t"][-1] <= cfg.synthetic.task.episode_s
    # commanded: the measured pose plus the step sent, each tick; executed: the arm's z, lagging behind it
    assert len(s["command_t"]) == round(cfg.synthetic.task.episode_s / cfg.data.action_dt_s)
    assert s["commanded_z"][5] < np.interp(s["command_t"][5], s["robot_t"], s["executed_z"])
    assert abs(s["executed_z"][-1] - (first.sensor["surface_z"] - first.final_depth_mm)) < 1e-3

    path = save_results(result, tmp_path / "closed_loop_results.json")
    assert "alines" not in path.read_text() and mmode_path(path).exists()
    back = load_results(path)
    kept = back.results["demonstrator"][0].sensor
    assert back.results["demonstrator"][1].sensor is None
    np.testing.assert_array_equal(kept["alines"], s["alines"])
    assert kept["surface_z"] == s["surface_z"]

    fig = plot_closed_loop_mmode(back, cfg.synthetic.task)
    titles = [ax.get_title() for ax in fig.axes if ax.images]
    assert titles == [f"demonstrator: episode 500, final depth {first.final_depth_mm:.2f} mm",
                      f"scripted: episode 500, final depth {result.results['scripted'][0].final_depth_mm:.2f} mm"]
    assert all("surface (truth)" in [ln.get_label() for ln in ax.lines] for ax in fig.axes if ax.images)
    (tmp_path / "plain.json").write_text(path.read_text())  # results saved without kept episodes: nothing to draw
    assert plot_closed_loop_mmode(load_results(tmp_path / "plain.json"), cfg.synthetic.task) is None
    save_results(load_results(tmp_path / "plain.json"), path)  # saved again without them: the old file goes
    assert not mmode_path(path).exists()
