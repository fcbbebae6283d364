"""The M-mode drawing on a synthetic episode: the waterfall's shape, lost packets blank, the overlays where the
sensor model puts them, force and z below."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from vla_lib.config import SensorTaskConfig  # noqa: E402
from vla_lib.data.mmode import MAX_COLUMNS, plot_mmode, sensor_task_overlays, waterfall_columns  # noqa: E402
from vla_lib.data.scenarios import sample_episode, sensor_values  # noqa: E402


def _episode(task):
    """6 s at 650 Hz, the tip descending from 5 mm above the surface to 2 mm below, 0.1 s of packets lost at 3 s."""
    ep = sample_episode(task, 3)
    t = np.arange(0, 6, 1 / 650)
    t = t[(t < 3.0) | (t > 3.1)]
    z = ep.surface_z + np.interp(t, [0, 1, 5, 6], [5, 5, -2, -2])
    force, alines = sensor_values(ep, task, z, np.random.default_rng(0))
    return ep, t, z, force, alines


def test_mmode_waterfall_and_overlays():
    task = SensorTaskConfig()
    ep, t, z, force, alines = _episode(task)
    overlays = sensor_task_overlays(task, ep.surface_z, z)
    fig = plot_mmode(t, alines, force, executed_z=(t[::6], z[::6]), commanded_z=(t[::65], z[::65] - 0.1),
                     **overlays)
    img_ax, line_ax = fig.axes[:2]
    image = np.ma.filled(img_ax.images[0].get_array(), np.nan)  # NaN (masked): no sample
    assert image.shape == (alines.shape[1], MAX_COLUMNS)  # depth down, time across, subsampled
    cols = np.flatnonzero(np.isnan(image).all(0))
    grid = np.linspace(t[0], t[-1], MAX_COLUMNS)
    assert len(cols) > 0 and np.all((grid[cols] > 3.0) & (grid[cols] < 3.1))  # the lost packets, and only they
    labels = {line.get_label() for line in img_ax.lines}
    assert {"surface (truth)", "needle tip", "surface with the tip at the target depth"} <= labels
    assert overlays["tip"] == 60 + 150 * task.oct_standoff_mm
    # where the OCT sees the surface, its reflection is the brightest sample of the column, on the truth line
    _, rows, keep = waterfall_columns(t)
    seen = keep & (overlays["surface"][rows] > 80) & (overlays["surface"][rows] < 950)
    peak = np.nanargmax(np.nan_to_num(image[:, seen], nan=-1), axis=0)
    assert np.abs(peak - overlays["surface"][rows][seen]).max() < 20
    assert [line.get_label() for line in line_ax.lines] == ["force"]
    z_ax = next(ax for ax in fig.axes if ax is not img_ax and ax is not line_ax)  # z on the force panel's twin
    assert [line.get_label() for line in z_ax.lines] == ["commanded z", "executed z"]
    plt.close(fig)


def test_mmode_without_truth_draws_no_overlay():
    task = SensorTaskConfig()
    _, t, _, force, alines = _episode(task)
    fig = plot_mmode(t[:400], alines[:400])  # fewer samples than columns: one column each
    assert fig.axes[0].images[0].get_array().shape == (alines.shape[1], 400)
    assert len(fig.axes[0].lines) == 0 and fig.axes[0].get_legend() is None and len(fig.axes) == 2
    plt.close(fig)
