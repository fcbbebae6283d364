"""A run folder's params.yaml describes that run folder: it follows the user's file until the run has trained, then it
is never rewritten or repointed."""
import yaml

from vla_lib import cli
from vla_lib.commands import run_params_file
from vla_lib.config import RunConfig


def test_a_trained_runs_params_file_is_never_rewritten_or_repointed(tmp_path, capsys):
    cfg = RunConfig.from_dict({"run_name": "r", "output_root": str(tmp_path)})
    first = run_params_file(cfg)
    assert first == tmp_path / "r" / "params.yaml"
    # not trained yet: an edit of the user's file (run the cache step again) is what the run folder then says
    edited = cfg.with_overrides({"train.epochs": 3})
    assert run_params_file(edited) == first and yaml.safe_load(first.read_text())["train"]["epochs"] == 3
    cfg = edited
    (tmp_path / "r" / "train" / "checkpoints").mkdir(parents=True)
    (tmp_path / "r" / "train" / "checkpoints" / "resume_state.pt").write_bytes(b"trained")
    text = first.read_text()
    # trained: other settings (here how the run is evaluated) get a file of their own, params.yaml untouched
    other = run_params_file(cfg.with_overrides({"closed_loop.episodes": 3, "train.num_workers": 1}))
    assert other != first and other.parent == first.parent and first.read_text() == text
    assert yaml.safe_load(other.read_text())["closed_loop"]["episodes"] == 3
    assert run_params_file(cfg) == first  # the run's own settings: its own file
    # a command that would put the trained run's files elsewhere is refused before it writes anything
    elsewhere = tmp_path / "elsewhere"
    code = cli.main(["--mode", "train", "--params", str(first), "--output-dir", str(elsewhere)])
    assert code == 2 and "--run-name" in capsys.readouterr().err
    assert not elsewhere.exists() and first.read_text() == text
    assert sorted(p.name for p in first.parent.iterdir()) == sorted(["params.yaml", other.name, "train"])
