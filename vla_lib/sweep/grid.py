"""The grid: a sweep's grid of parameter values expanded into member parameter dicts and files, their folders."""
from __future__ import annotations

import copy
import itertools
from pathlib import Path

import yaml

from vla_lib.config import WEIGHTLESS, RunConfig, load_params
from vla_lib.dotted import set_dotted
from vla_lib.notebook import repo_root


def axis_label(key: str, value) -> str:
    """One grid axis at one value as a name part: `train.seed` 1 -> seed1, `augment.enabled` True -> augment_on."""
    leaf = key.split(".")[-1]
    if leaf == "enabled":  # a section switched on or off (augment.enabled): the section names it
        leaf = key.split(".")[-2]
    if isinstance(value, bool):
        return f"{leaf.replace('_enabled', '')}_{'on' if value else 'off'}"
    return f"{leaf}{value}"


def sweep_name(cfg: RunConfig) -> str:
    return cfg.sweep.name if cfg.sweep.name != "sweep" else f"{cfg.run_name}_sweep"


def expand(base: dict) -> list[tuple[str, dict]]:
    """(member name, full parameter dict) for every combination of the grid (validated as RunConfigs)."""
    cfg = RunConfig.from_dict(base)
    name = sweep_name(cfg)
    keys = list(cfg.sweep.grid)
    members, judged = [], set()
    for combo in itertools.product(*(cfg.sweep.grid[k] for k in keys)):
        values = copy.deepcopy(base)
        for k, v in cfg.sweep.overrides.items():
            set_dotted(values, k, v, create=True)
        for k, v in zip(keys, combo):
            set_dotted(values, k, v, create=True)
        member = "-".join(axis_label(k, v) for k, v in zip(keys, combo)) or "base"
        values["output_root"] = str(Path(cfg.output_root) / name)
        values["run_name"] = member
        set_dotted(values, "train.output_dir", str(Path(cfg.output_root) / name / member / "train"), create=True)
        # the shared cache may lack a member's samples (without the sensor, anchors start before the first sensor
        # window): the member encodes those few into the same store instead of failing
        set_dotted(values, "cache.allow_inline_encoding", True, create=True)
        values["sweep"] = {"name": name, "torch_threads": cfg.sweep.torch_threads}
        _weightless_once(values, combo, keys, judged)
        RunConfig.from_dict(values)  # fail early on a bad key or value
        members.append((member, values))
    return members


# grid keys that change only the trained weights (what a weightless predictor does not read)
TRAINING_ONLY = ("train.", "model.", "data.sensor_enabled", "augment.")


def _weightless_once(values: dict, combo: tuple, keys: list, judged: set) -> None:
    """Run the weightless predictors only in the first member of each group that differs in training settings only
    (a seed sweep runs the scripted descent once, not once a seed); the report reads them from that member."""
    evaluation = tuple((k, repr(v)) for k, v in zip(keys, combo) if not k.startswith(TRAINING_ONLY))
    if evaluation in judged:
        predictors = values.setdefault("closed_loop", {}).get("predictors") or RunConfig().closed_loop.predictors
        values["closed_loop"]["predictors"] = [p for p in predictors if p not in WEIGHTLESS]
    judged.add(evaluation)


def base_values(source: RunConfig | str | Path, root: Path) -> dict:
    """The sweep's base values: a config as built (flags and --set included), or a params file (`extends:` resolved)."""
    return source.to_dict() if isinstance(source, RunConfig) else load_params(root / source)


def write_params(source: RunConfig | str | Path, root: Path | None = None) -> list[tuple[str, Path]]:
    """Write one params file per member under outputs/<sweep>/params/; returns (member, path relative to root)."""
    root = root or repo_root()
    base = base_values(source, root)
    cfg = RunConfig.from_dict(base)
    out = Path(cfg.output_root) / sweep_name(cfg) / "params"
    (root / out).mkdir(parents=True, exist_ok=True)
    written = []
    for member, values in expand(base):
        path = out / f"{member}.yaml"
        (root / path).write_text(yaml.safe_dump(values, sort_keys=False))
        written.append((member, path))
    return written


def member_dir(cfg: RunConfig, member: str) -> Path:
    return Path(cfg.output_root) / sweep_name(cfg) / member


def frame_cache_path(cfg: RunConfig) -> Path:
    """The closed-loop frame cache shared by a sweep's members (a member's output_root is the sweep's folder)."""
    return Path(cfg.output_root) / "sim_vl_features.pt"
