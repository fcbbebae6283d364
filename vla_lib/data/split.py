"""Episode-level train/val split: whole sessions go to one side, deterministic from a seed."""
from __future__ import annotations

import numpy as np

from vla_lib.data.recorder_files import DataError


def split_sessions(index, data_cfg) -> tuple[list[str], list[str]]:
    """(train_ids, val_ids). `data_cfg.val_sessions` (ids or session folder names) overrides the random draw
    (`split_seed`).

    The draw is stratified by sensor/no-sensor so that validation sees both kinds whenever each has >= 2 sessions.
    """
    ids = sorted(index.sessions)
    if data_cfg.val_sessions:
        wanted = set(data_cfg.val_sessions)
        val = [s for s in ids if s in wanted or s.split("/")[-1] in wanted]
        unknown = wanted - set(val) - {s.split("/")[-1] for s in val}
        if unknown:
            raise DataError(index.data_root, f"val_sessions not found among usable sessions: {sorted(unknown)}")
    else:
        rng = np.random.default_rng(data_cfg.split_seed)
        val = []
        for has_sensor in (True, False):
            stratum = [s for s in ids if index.sessions[s].has_sensor == has_sensor]
            n_val = int(round(data_cfg.val_fraction * len(stratum)))
            if len(stratum) >= 2 and data_cfg.val_fraction > 0:
                n_val = max(1, n_val)
            val += [stratum[i] for i in rng.permutation(len(stratum))[:n_val]]
    train = [s for s in ids if s not in set(val)]
    if not train:
        raise DataError(index.data_root, "the split left no training session")
    return train, sorted(val)
