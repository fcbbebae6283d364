"""Seeds and sweeps with papermill: a grid of parameter values expands into parameter files, one papermill run of
`notebooks/sweep_member.ipynb` each (training, offline and closed-loop evaluation), resumably.

    sweep:
      name: demo_sweep
      grid: {data.sensor_enabled: [true, false], train.seed: [0, 1, 2]}
      overrides: {train.epochs: 8}

Each combination is a member `outputs/<sweep.name>/<member>/` (its params file in `outputs/<sweep.name>/params/`).
Every member shares the base run's sessions and VL feature cache (`data.root`, `cache.dir` unchanged: the VL features
do not depend on the heads' seed or sensor flag), and a frame-level VL cache for the closed-loop rig. A member is done
when its `sweep_done.json` exists; a rerun skips done members, and a member killed mid-training resumes from its own
`resume_state.pt`. `collect` gathers loss curves and metrics for notebook 05.

The package's modules: `grid` (the grid expanded into member parameter files, the members' folders), `run` (papermill
runs of the members, one member's training and evaluation) and `report` (collecting, figures and the verdict).
"""
from vla_lib.sweep.grid import expand, frame_cache_path, member_dir, sweep_name, write_params
from vla_lib.sweep.run import DONE, MEMBER_NOTEBOOK, run_member, run_sweep
from vla_lib.sweep.report import (closed_loop_summary, collect, group_label, mean_std_table, plot_closed_loop_summary,
                                  plot_loss_curves, robustness_summary, show, verdict)

__all__ = ["DONE", "MEMBER_NOTEBOOK", "closed_loop_summary", "collect", "expand", "frame_cache_path", "group_label",
           "mean_std_table", "member_dir", "plot_closed_loop_summary", "plot_loss_curves", "robustness_summary",
           "run_member", "run_sweep", "show", "sweep_name", "verdict", "write_params"]
