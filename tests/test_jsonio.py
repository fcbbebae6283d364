"""write_json: merges from processes running at once keep every key (evaluation and the closed loop share a
metrics.json); JSON has no NaN, so non-finite values are null."""
import json
import multiprocessing as mp

import numpy as np

from vla_lib.jsonio import write_json


def _merge_many(path: str, who: str, n: int) -> None:
    for i in range(n):
        write_json(path, {f"{who}{i}": i}, merge=True)


def test_concurrent_merges_lose_no_key(tmp_path):
    path = str(tmp_path / "metrics.json")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_merge_many, args=(path, who, 60)) for who in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    got = json.loads(open(path).read())
    assert sorted(got) == sorted(f"{w}{i}" for w in "ab" for i in range(60))


def test_nonfinite_become_null_and_plain_write_replaces(tmp_path):
    path = tmp_path / "m.json"
    write_json(path, {"x": 1})
    write_json(path, {"y": np.float32("nan"), "z": np.arange(2)})
    assert json.loads(path.read_text()) == {"y": None, "z": [0, 1]}
