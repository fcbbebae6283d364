"""The delay sweep: each (mode, delay) runs the closed loop with that injected inference delay, and the loop reports
the delay it saw, in steps."""
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from vla_lib.config import RunConfig
from vla_lib.evaluation.delay_sweep import delay_sweep


def test_the_sweep_injects_each_delay_per_mode():
    cfg = RunConfig.from_dict({"synthetic": {"scenario": "sensor_task", "image_width": 160, "image_height": 90},
                               "data": {"views": ["View1_left"]}, "closed_loop": {"guard_off_too": True}})
    table = delay_sweep(cfg, None, [0.0, 0.2], ["first", "rtc"], predictors=["demonstrator"], episodes=1,
                        log=lambda *a: None)
    assert list(zip(table["mode"], table["delay_ms"])) == [("first", 0), ("first", 200), ("rtc", 0), ("rtc", 200)]
    assert table["inference_delay_steps"].tolist() == pytest.approx([0, 2, 0, 2])
    assert table["peak_force_n_guard_off"].notna().all() and (table["success_rate"] == 1.0).all()
    assert table.loc[table.delay_ms == 200, "n_no_chunk"].tolist() == [2, 2]  # no chunk usable in the first 2 ticks
    with pytest.raises(Exception, match="must leave a step"):
        delay_sweep(cfg, None, [0.7], ["rtc"], predictors=["demonstrator"], episodes=1)


def test_the_sweep_compares_every_execution_mode_unless_told_and_notebook_07_asks_for_all(monkeypatch):
    """The modes compared by default are the runtime's (`runtime/execution.py` `EXECUTION_MODES`), a new one too;
    notebook 07 lists none of its own."""
    from vla_lib.evaluation import delay_sweep as module
    from vla_lib.runtime import execution

    monkeypatch.setitem(execution.EXECUTION_MODES, "new", execution.EXECUTION_MODES["first"])
    figures = {**dict.fromkeys(module.COLUMNS, 0.0), "interventions": {}}
    monkeypatch.setattr(module, "evaluate_closed_loop",
                        lambda run, *a, **k: SimpleNamespace(metrics={"demonstrator": figures}))
    table = delay_sweep(RunConfig(), None, [0.0], predictors=["demonstrator"], log=lambda *a: None)
    assert table["mode"].tolist() == list(execution.EXECUTION_MODES) and "new" in table["mode"].tolist()
    nb = json.loads((Path(__file__).resolve().parents[2] / "notebooks/07_runtime_delay.ipynb").read_text())
    [params] = [c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", [])]
    assert "\nmodes = None  #" in "".join(params["source"])
