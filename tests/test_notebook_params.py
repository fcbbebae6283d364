"""Notebooks take the params file they are given and nothing else, open clean in Jupyter, and stream their progress."""
import json
import platform
import re
from pathlib import Path

import nbformat
import pytest
import yaml

from vla_lib.config import ConfigError, RunConfig
from vla_lib.notebook import PARAMETERS, execute, notebook_config

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def _parameters_cell(nb: dict) -> str:
    [cell] = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    return "".join(cell["source"])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_notebook_declares_every_section_unset(path):
    """papermill -f injects every top-level key of the file: each must be declared (no "Passed unknown parameter")
    and unset by default (nothing but what was given is read)."""
    nb = json.loads(path.read_text())
    assigned = dict(re.findall(r"^(\w+) = (.+?)(?:\s+#.*)?$", _parameters_cell(nb), re.M))
    assert all(assigned.get(k) == "None" for k in PARAMETERS), {k: assigned.get(k) for k in PARAMETERS}
    import papermill as pm
    parsed = {p["name"] for p in pm.inspect_notebook(str(path)).values()}
    assert set(assigned) <= parsed, set(assigned) - parsed  # -p NAME works for every one (papermill parses it)
    calls = [l for c in nb["cells"] for l in "".join(c["source"]).splitlines() if "notebook_config(" in l
             and "import" not in l]
    assert calls == ["cfg = notebook_config(globals())"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_opens_clean_and_its_title_matches_its_name(path):
    """JupyterLab rewrites (and autosaves into the tracked file) metadata that differs from what the kernel reports."""
    nb = json.loads(path.read_text())
    spec = json.loads((Path(__import__("sys").prefix) / "share/jupyter/kernels/python3/kernel.json").read_text())
    assert nb["metadata"]["kernelspec"] == {"display_name": spec["display_name"], "language": "python",
                                            "name": "python3"}
    # the reference machine's Python (environment.yml: 3.11); JupyterLab rewrites the version on any other one
    assert nb["metadata"]["language_info"]["version"].rsplit(".", 1)[0] == platform.python_version().rsplit(".", 1)[0]
    assert all("outputs" not in c or c["outputs"] == [] for c in nb["cells"])
    title = "".join(nb["cells"][0]["source"]).splitlines()[0]
    number = path.stem.split("_")[0]
    assert title.startswith(f"# {number} ·") if number.isdigit() else title.startswith("# Sweep member")


def test_the_params_file_is_the_whole_config(tmp_path):
    scripted = RunConfig.from_yaml(REPO / "params/scripted.yaml")
    assert notebook_config({"params_file": "params/scripted.yaml"}) == scripted  # -p params_file: that file
    assert scripted.data.groups != RunConfig.from_yaml(REPO / "params/demo.yaml").data.groups  # not demo's
    # -f FILE: its sections, its `extends:` resolved from params/, and nothing of demo.yaml under them
    for name in ("scripted.yaml", "demo_stage2.yaml", "gpu_check.yaml"):
        injected = yaml.safe_load((REPO / "params" / name).read_text())
        assert notebook_config(injected) == RunConfig.from_yaml(REPO / "params" / name), name
    assert notebook_config({}) == RunConfig.from_yaml(REPO / "params/demo.yaml")  # Jupyter, nothing given
    with pytest.raises(ConfigError, match="not both"):
        notebook_config({"params_file": "params/scripted.yaml", "train": {"epochs": 1}})
    with pytest.raises(ConfigError, match="injected parameters.*train"):
        notebook_config({"train": {"epoch": 1}})


@pytest.mark.slow
def test_a_notebook_runs_with_its_progress_streamed_and_no_warnings(tmp_path, capfd, caplog):
    nb = nbformat.v4.new_notebook(metadata=json.loads(NOTEBOOKS[0].read_text())["metadata"])
    nb.cells = [nbformat.v4.new_code_cell("params_file = None", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("import time\nfor k in range(3):\n    print(f'epoch {k}', flush=True)\n"
                                          "print(params_file)")]
    src = tmp_path / "n.ipynb"
    nbformat.write(nb, src)
    execute(src, tmp_path / "out.ipynb", "params/ci.yaml", cwd=REPO, prefix="[nb] ")
    out, err = capfd.readouterr()  # the kernel's own stderr too (a nested kernel's lands in the outer notebook)
    assert out.splitlines() == ["[nb] epoch 0", "[nb] epoch 1", "[nb] epoch 2", "[nb] params/ci.yaml"]
    assert "WARNING" not in err and "encryption" not in err, err
    assert not [r for r in caplog.records if r.levelname == "WARNING"], caplog.records
    done = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    streams = [o for c in done.cells for o in c.get("outputs", []) if o.get("output_type") == "stream"]
    assert streams and all(o["name"] == "stdout" for o in streams)  # no kernel warning on stderr
