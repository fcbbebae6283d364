"""The VL feature store: sharded safetensors files + a JSON index, keyed by content.

Layout: `<cache.dir>/<fingerprint>/` where the fingerprint hashes everything that changes a feature (backbone identity,
pixel budget, pooling, chat template, configured views); inside, the sample's `cache_key` (instruction + each view's
frame identity) names the entry. Change any input and the lookup misses: nothing stale is ever served, and no
"rm -rf the cache" is needed.

- Shards are written whole to a temporary name and renamed (atomic); each carries its keys and a SHA-256 of its
  tensor bytes in the safetensors metadata, so the index can always be rebuilt from the shards and `verify` can tell
  a corrupt or truncated shard by name.
- Several processes write their own shards (`rank{r}-...`); `merge_index` unions them into `index.json`.
- A build killed at any point loses only its unflushed buffer; the rerun encodes what no shard holds.
"""
from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file


class CacheMissError(KeyError):
    def __init__(self, missing: list[str], store_dir: Path, command: str):
        self.missing = missing
        shown = ", ".join(missing[:5]) + (f" … (+{len(missing) - 5} more)" if len(missing) > 5 else "")
        super().__init__(f"VL cache miss: {len(missing)} key(s) not in {store_dir}: {shown}. Build them with: "
                         f"{command}  (or set cache.allow_inline_encoding: true to encode on the fly)")

    def __str__(self) -> str:
        return self.args[0]


def fingerprint_of(parts: dict) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


class FeatureStore:
    def __init__(self, root: str | Path, parts: dict):
        self.parts = parts
        self.dir = Path(root) / fingerprint_of(parts)
        self.dir.mkdir(parents=True, exist_ok=True)
        meta = self.dir / "meta.json"
        if not meta.exists():
            _atomic_write_text(meta, json.dumps(parts, indent=1, sort_keys=True))
        self._index: dict[str, tuple[str, int]] = {}
        self._loaded: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.refresh()

    # -- index ----------------------------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Load index.json, then add any shard it does not list yet (a rank that finished after the last merge)."""
        index_file = self.dir / "index.json"
        self._index = {k: tuple(v) for k, v in json.loads(index_file.read_text()).items()} if index_file.exists() else {}
        listed = {shard for shard, _ in self._index.values()}
        for shard in sorted(self.dir.glob("*.safetensors")):
            if shard.name not in listed:
                for row, key in enumerate(_shard_keys(shard)):
                    self._index.setdefault(key, (shard.name, row))

    def merge_index(self) -> int:
        self.refresh()
        _atomic_write_text(self.dir / "index.json", json.dumps(self._index))
        return len(self._index)

    def __contains__(self, key: str) -> bool:
        return key in self._index

    def __len__(self) -> int:
        return len(self._index)

    def missing(self, keys) -> list[str]:
        return [k for k in dict.fromkeys(keys) if k not in self._index]

    # -- reading --------------------------------------------------------------------------------------------------
    def get(self, keys: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(features (N, T, D) float16, mask (N, T) bool)."""
        missing = self.missing(keys)
        if missing:
            raise CacheMissError(missing, self.dir, "python -m vla_lib --mode cache --params <your params.yaml>")
        feats, masks = [], []
        for k in keys:
            shard, row = self._index[k]
            f, m = self._shard(shard)
            feats.append(f[row]), masks.append(m[row])
        return torch.stack(feats), torch.stack(masks)

    def _shard(self, name: str):
        if name not in self._loaded:
            with safe_open(self.dir / name, framework="pt") as f:
                self._loaded[name] = (f.get_tensor("features"), f.get_tensor("mask").bool())
        return self._loaded[name]

    # -- writing --------------------------------------------------------------------------------------------------
    def writer(self, rank: int = 0, shard_size: int = 256) -> "ShardWriter":
        return ShardWriter(self, rank, shard_size)

    # -- checking -------------------------------------------------------------------------------------------------
    def verify(self) -> list[str]:
        """Problems found, each naming its shard (empty list = healthy)."""
        problems = []
        for shard in sorted(self.dir.glob("*.safetensors")):
            try:
                with safe_open(shard, framework="pt") as f:
                    meta = f.metadata()
                    feats, mask = f.get_tensor("features"), f.get_tensor("mask")
                keys = json.loads(meta["keys"])
                if len(keys) != len(feats) or len(keys) != len(mask):
                    problems.append(f"{shard}: {len(keys)} keys but {len(feats)} rows")
                elif _digest(feats, mask) != meta["sha256"]:
                    problems.append(f"{shard}: checksum mismatch (corrupt data)")
            except Exception as e:  # a truncated or garbled file fails inside safetensors in several ways
                problems.append(f"{shard}: unreadable ({type(e).__name__}: {e})")
        return problems


class FeatureTable:
    """The features of a fixed list of samples, read from the store once: one row per distinct key, and each
    sample's row. Training looks features up thousands of times a second; a dict-and-shard lookup per item is too
    slow, and the distinct entries are small (V+1 tokens x hidden, fp16) and fit in memory."""

    def __init__(self, store: FeatureStore, keys):
        keys = list(keys)
        unique = list(dict.fromkeys(keys))
        position = {k: i for i, k in enumerate(unique)}
        self.features, self.mask = store.get(unique)  # raises CacheMissError naming what is missing
        self.rows = np.fromiter((position[k] for k in keys), dtype=np.int64, count=len(keys))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        r = self.rows[i]
        return self.features[r], self.mask[r]


class ShardWriter:
    def __init__(self, store: FeatureStore, rank: int, shard_size: int):
        self.store, self.rank, self.shard_size = store, rank, shard_size
        self.keys: list[str] = []
        self.feats: list[torch.Tensor] = []
        self.masks: list[torch.Tensor] = []
        self.written = 0

    def add(self, keys: list[str], feats: torch.Tensor, masks: torch.Tensor) -> None:
        for k, f, m in zip(keys, feats, masks):
            if k in self.store or k in self.keys:  # duplicates are encoded once, stored once
                continue
            self.keys.append(k), self.feats.append(f.detach().to("cpu", torch.float16)), self.masks.append(m.cpu())
        if len(self.keys) >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        if not self.keys:
            return
        feats = torch.stack(self.feats).contiguous()
        mask = torch.stack(self.masks).to(torch.uint8).contiguous()
        name = f"rank{self.rank}-{uuid.uuid4().hex[:12]}.safetensors"
        tmp = self.store.dir / f".{name}.tmp"
        save_file({"features": feats, "mask": mask}, str(tmp),
                  metadata={"keys": json.dumps(self.keys), "sha256": _digest(feats, mask)})
        os.replace(tmp, self.store.dir / name)
        for row, k in enumerate(self.keys):
            self.store._index[k] = (name, row)
        self.written += len(self.keys)
        self.keys, self.feats, self.masks = [], [], []


def _shard_keys(path: Path) -> list[str]:
    try:
        with safe_open(path, framework="pt") as f:
            return json.loads(f.metadata()["keys"])
    except Exception:
        return []  # unreadable: `verify` names it; its keys count as missing and get rebuilt


def _digest(feats: torch.Tensor, mask: torch.Tensor) -> str:
    h = hashlib.sha256(feats.contiguous().view(torch.uint8).numpy().tobytes() if feats.dtype != torch.uint8 else
                       feats.numpy().tobytes())
    h.update(np.ascontiguousarray(mask.to(torch.uint8).numpy()).tobytes())
    return h.hexdigest()


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
