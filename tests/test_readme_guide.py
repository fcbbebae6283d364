"""README "Train on your own recordings": every command of the guide, in order, as pasted, on synthetic sessions in
the recorder's layouts under a temporary root. The one hand edit (step 1's YAML block) is applied as written, with the
recordings' folder filled in and the CPU-sized settings a 2-core machine needs (the tiny VLM instead of the hub's
3B, two epochs)."""
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import small_synthetic
from vla_lib.config import deep_merge
from vla_lib.sim.demonstrations import write_dataset

REPO = Path(__file__).resolve().parents[1]
CPU_SIZED = {"backbone": {"name_or_path": "tiny", "image_resize_height": 168, "image_resize_width": 308},
             "model": {"preset": "small"}, "data": {"val_fraction": 0.5},
             "train": {"compile": False, "epochs": 2, "batch_size": 8, "grad_accum_steps": 1, "num_workers": 0,
                       "wandb_mode": "disabled"},
             "eval": {"realtime_duration_s": 2.0, "latency_repeats": 1, "latency_warmup": 0}}


def _guide() -> tuple[list[str], dict]:
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Train on your own recordings\n", 1)[1].split("\n## ", 1)[0]
    commands = [line for block in re.findall(r"```bash\n(.*?)```", section, re.S) for line in block.splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    [edit] = re.findall(r"```yaml\n(.*?)```", section, re.S)
    return commands, yaml.safe_load(edit)


def test_the_guide_is_short_and_starts_from_a_copy_of_the_real_settings():
    commands, edit = _guide()
    assert commands[0] == ". .venv/bin/activate" and commands[1].startswith("cp params/stage1.yaml ")
    assert len(commands) <= 9 and not any("accelerate launch" in c for c in commands)  # exit 2 + one line, as said
    assert {"run_name", "data"} <= set(edit) and edit["data"]["groups"]
    assert len((REPO / "README.md").read_text().splitlines()) <= 250


@pytest.mark.quality  # 2-3 min: eight processes, a cache, a training run, an evaluation, a live dry run
def test_every_command_of_the_guide_runs_as_pasted(tmp_path):
    commands, edit = _guide()
    recordings = tmp_path / "recordings"  # two sessions in each recorder folder (one of each is held out)
    write_dataset(small_synthetic(recordings, num_sensor_sessions=4, num_nosensor_sessions=4))
    root = tmp_path / "workbench"
    root.mkdir()
    (root / "params").mkdir()
    (root / "params" / "stage1.yaml").write_text((REPO / "params/stage1.yaml").read_text())
    os.symlink(REPO / ".venv", root / ".venv")  # the environment scripts/setup.sh made; nothing else on PATH
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if Path(p) != Path(sys.executable).parent)
    activate, *commands = commands
    mine = root / shlex.split(commands[0])[-1]
    edit = deep_merge(edit, {"data": {"root": str(recordings)}})
    for i, command in enumerate(commands):  # one terminal: the environment stays active from command to command
        done = subprocess.run(f"{activate} && {command}", shell=True, executable="/bin/bash", cwd=root, env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"step {i + 1}: {command}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        assert "Traceback" not in done.stderr, command
        if i == 0:  # the hand edit of step 1, then what a 2-core CPU needs
            values = deep_merge(deep_merge(yaml.safe_load(mine.read_text()), edit), CPU_SIZED)
            values["backbone"]["tiny_model_dir"] = str(tmp_path / "tiny")
            mine.write_text(yaml.safe_dump(values, sort_keys=False))
    run = root / "outputs" / edit["run_name"]
    assert (run / "params.yaml").exists() and (run / "metrics.json").exists()
    assert sorted(p.name for p in (run / "train" / "checkpoints").glob("*best.pt"))
    assert not (REPO / "outputs" / edit["run_name"]).exists()  # nothing in the repository's own outputs/
