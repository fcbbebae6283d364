"""`python -m vla_lib --mode live --simulate-senders`: a short dry run on loopback writes the report."""
import json

import pytest
import yaml

from vla_lib import cli
from vla_lib.data.recorder_formats import read_session
from tests.conftest import REPO, ci_config


@pytest.fixture(scope="module")
def checkpoint(rig_root, tmp_path_factory):
    """Random heads (real stats, tiny backbone) saved as a checkpoint: the rig I/O does not need a trained one."""
    from vla_lib.policy.checkpoint import save_checkpoint
    from vla_lib.live import untrained_policy

    tmp = tmp_path_factory.mktemp("live_ckpt")
    cfg = ci_config(rig_root, tmp)
    policy = untrained_policy(cfg)
    save_checkpoint(tmp / "heads.pt", policy.heads, policy.stats, cfg, epoch=0, step=0, val_loss=0.0)
    return tmp / "heads.pt", cfg.backbone.tiny_model_dir


def test_live_mode_dry_run_on_simulated_senders(rig_root, checkpoint, live_cfg, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    path, tiny = checkpoint
    params = yaml.safe_load((REPO / "params/ci.yaml").read_text())
    params.update(output_root=str(tmp_path), run_name="rigtest")
    params["data"]["root"] = str(rig_root)
    params["backbone"]["tiny_model_dir"] = tiny
    params["eval"]["checkpoint"] = str(path)
    params["live"] = {k: getattr(live_cfg, k) for k in ("robot_endpoint", "camera_endpoint", "sensor_endpoint",
                                                         "action_endpoint")}
    params["live"]["replay_session"] = str(sorted(rig_root.glob("*/recv_all_*"))[0])
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(params))
    assert cli.main(["--mode", "live", "--params", str(tmp_path / "p.yaml"), "--simulate-senders", "--duration", "3",
                     "--record"]) == 0
    report = json.loads((tmp_path / "rigtest/live/report.json").read_text())
    for key in ("action_hz", "deadline_misses", "actions_sent", "dropped", "action_latency_ms_p50",
                "action_latency_ms_p95", "action_latency_ms_p99", "staleness_s", "streams", "rss_mb_end"):
        assert key in report, key
    assert 8 <= report["action_hz"] <= 12 and report["action_steps"] >= 20
    assert report["send_actions"] is False and report["actions_sent"] == 0
    assert report["actions_dry_run"] == report["action_steps"]
    assert report["dropped"] == {"robot": 0, "camera": 0, "sensor": 0}
    assert report["lost"] == {"robot": 0, "camera": 0, "sensor": 0}
    assert set(report["staleness_s"]) == {"robot", "sensor", "camera", "View1_left", "View2_left", "View3_left", "View4_left",
                                          "View5"}
    assert report["staleness_s"]["robot"]["p50"] < 0.05 and report["staleness_s"]["View1_left"]["max"] < 1.5
    ticks = (tmp_path / "rigtest/live/ticks.jsonl").read_text().splitlines()
    actions = (tmp_path / "rigtest/live/actions.jsonl").read_text().splitlines()
    assert len(ticks) == len(actions) == report["action_steps"]
    recorded = read_session(report["recorded_session"])
    assert recorded.has_sensor and len(recorded.robot_times) == report["streams"]["robot"]["accepted"]
