"""The delay sweep: each (mode, delay) runs the closed loop with that injected inference delay, and the loop reports
the delay it saw, in steps."""
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
