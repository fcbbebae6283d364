"""The VL feature store: sharded safetensors files + a JSON index, keyed by content.

Layout: `<cache.dir>/<fingerprint>/` where the fingerprint hashes everything that changes a feature (backbone identity,
pixel budget, pooling, chat template, configured views); inside, the sample's `cache_key` (instruction + each view's
frame identity) names the entry. Change any input and the lookup misses: nothing stale is ever served, and no
"rm -rf the cache" is needed.

- Shards are written whole to a temporary name and renamed (atomic); each carries its keys and a SHA-256 of its
  tensor bytes in the safetensors metadata, so the index can always be rebuilt from the shards and `verify` can tell
  a corrupt or truncated shard by name.
- A shard's checksum is checked the first time it is opened. The keys of a missing, unreadable or corrupt shard count
  as missing: training stops with the command that rebuilds them, and `--mode cache` moves the shard aside
  (`*.corrupt`) and encodes them again. Nothing corrupt is ever served.
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

from vla_lib.atomic import atomic_write, atomic_write_text


class CacheMissError(KeyError):
    def __init__(self, missing: list[str], store_dir: Path, command: str, bad_shards: dict | None = None):
        self.missing = missing
        shown = ", ".join(missing[:5]) + (f" … (+{len(missing) - 5} more)" if len(missing) > 5 else "")
        damaged = "".join(f" Damaged shard {name}: {why}." for name, why in sorted((bad_shards or {}).items()))
        super().__init__(f"VL cache miss: {len(missing)} key(s) not in {store_dir}: {shown}.{damaged} Build them "
                         f"with: {command}  (or set cache.allow_inline_encoding: true to encode on the fly)")

    def __str__(self) -> str:
        return self.args[0]


def fingerprint_of(parts: dict) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


class FeatureStore:
    def __init__(self, root: str | Path, parts: dict, create: bool = True):
        self.parts = parts
        self.fingerprint = fingerprint_of(parts)
        self.dir = Path(root) / self.fingerprint
        if create:
            self.dir.mkdir(parents=True, exist_ok=True)
        meta = self.dir / "meta.json"
        if create and not meta.exists():
            atomic_write_text(meta, json.dumps(parts, indent=1, sort_keys=True))
        self._index: dict[str, tuple[str, int]] = {}
        self._loaded: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.bad_shards: dict[str, str] = {}  # shard name -> why it cannot be served
        self.refresh()

    # -- index ----------------------------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Load index.json (dropping entries whose shard file is gone), then add any shard it does not list yet (a
        rank that finished after the last merge, or a rebuild of a damaged shard's keys)."""
        index_file = self.dir / "index.json"
        try:
            listed = json.loads(index_file.read_text()) if index_file.exists() else {}
        except json.JSONDecodeError:
            listed = {}  # a damaged index is derived data: rebuilt from the shards' own metadata below
        present = {p.name for p in self.dir.glob("*.safetensors")} if self.dir.exists() else set()
        self._index = {k: tuple(v) for k, v in listed.items() if v[0] in present and v[0] not in self.bad_shards}
        known = {shard for shard, _ in self._index.values()}
        for name in sorted(present - known - set(self.bad_shards)):
            keys = _shard_keys(self.dir / name)
            if keys is None:
                self.bad_shards[name] = "unreadable header"
                continue
            for row, key in enumerate(keys):
                self._index[key] = (name, row)  # a later shard wins over an entry it re-encodes

    def merge_index(self) -> int:
        self.refresh()
        atomic_write_text(self.dir / "index.json", json.dumps(self._index))
        return len(self._index)

    def __contains__(self, key: str) -> bool:
        return key in self._index and self._healthy(self._index[key][0])

    def __len__(self) -> int:
        return len(self._index)

    def missing(self, keys) -> list[str]:
        """Keys with no entry, or whose shard is missing, unreadable or fails its checksum (checked once per shard)."""
        return [k for k in dict.fromkeys(keys) if k not in self]

    def _healthy(self, name: str) -> bool:
        if name in self.bad_shards:
            return False
        try:
            self._shard(name)
            return True
        except ShardError as e:
            self.bad_shards[name] = e.reason
            return False

    def quarantine_bad_shards(self) -> list[str]:
        """Move damaged shards aside (`<name>.corrupt`, kept for inspection) so their keys get rebuilt; returns them."""
        for p in sorted(self.dir.glob("*.safetensors")):
            self._healthy(p.name)
        moved = []
        for name, why in sorted(self.bad_shards.items()):
            if (self.dir / name).exists():
                os.replace(self.dir / name, self.dir / f"{name}.corrupt")
                moved.append(f"{name}: {why}")
        self._index = {k: v for k, v in self._index.items() if v[0] not in self.bad_shards}
        return moved

    # -- reading --------------------------------------------------------------------------------------------------
    def get(self, keys: list[str], fix_command: str = "python -m vla_lib --mode cache --params ...",
            ) -> tuple[torch.Tensor, torch.Tensor]:
        """(features (N, T, D) as stored (Stage 1: float16), mask (N, T) bool); a miss raises CacheMissError with
        `fix_command`."""
        missing = self.missing(keys)
        if missing:
            raise CacheMissError(missing, self.dir, fix_command, self.bad_shards)
        feats, masks = [], []
        for k in keys:
            shard, row = self._index[k]
            f, m = self._shard(shard)
            feats.append(f[row]), masks.append(m[row])
        return torch.stack(feats), torch.stack(masks)

    def _shard(self, name: str):
        """The shard's (features, mask), its checksum checked on first open; raises ShardError when damaged."""
        if name not in self._loaded:
            feats, mask = _read_checked(self.dir / name)
            self._loaded[name] = (feats, mask.bool())
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
                _read_checked(shard)
            except ShardError as e:
                problems.append(f"{shard}: {e.reason}")
        listed = {shard for shard, _ in self._index.values()}
        problems += [f"{self.dir / name}: listed in index.json but missing" for name in sorted(listed)
                     if not (self.dir / name).exists()]
        return problems


class FeatureTable:
    """The features of a fixed list of samples, read from the store once: one row per distinct key, and each
    sample's row. Training looks features up thousands of times a second; a dict-and-shard lookup per item is too
    slow, and the distinct entries are small (V+1 tokens x hidden, fp16) and fit in memory."""

    def __init__(self, store: FeatureStore, keys, fix_command: str = "python -m vla_lib --mode cache --params ..."):
        keys = list(keys)
        unique = list(dict.fromkeys(keys))
        position = {k: i for i, k in enumerate(unique)}
        self.features, self.mask = store.get(unique, fix_command)  # raises CacheMissError naming what is missing
        self.rows = np.fromiter((position[k] for k in keys), dtype=np.int64, count=len(keys))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        r = self.rows[i]
        return self.features[r], self.mask[r]


class ShardWriter:
    def __init__(self, store: FeatureStore, rank: int, shard_size: int, dtype: torch.dtype | None = torch.float16):
        """`dtype`: what entries are stored as (Stage 1's pooled features: fp16; None: as given)."""
        self.store, self.rank, self.shard_size, self.dtype = store, rank, shard_size, dtype
        self.keys: list[str] = []
        self.feats: list[torch.Tensor] = []
        self.masks: list[torch.Tensor] = []
        self.written = 0

    def add(self, keys: list[str], feats: torch.Tensor, masks: torch.Tensor) -> None:
        for k, f, m in zip(keys, feats, masks):
            if k in self.store or k in self.keys:  # duplicates are encoded once, stored once
                continue
            self.keys.append(k), self.feats.append(f.detach().to("cpu", self.dtype or f.dtype)), self.masks.append(m.cpu())
        if len(self.keys) >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        if not self.keys:
            return
        feats = torch.stack(self.feats).contiguous()
        mask = torch.stack(self.masks).to(torch.uint8).contiguous()
        name = f"rank{self.rank}-{uuid.uuid4().hex[:12]}.safetensors"
        atomic_write(self.store.dir / name, lambda tmp: save_file(
            {"features": feats, "mask": mask}, str(tmp), metadata={"keys": json.dumps(self.keys),
                                                                 "sha256": _digest(feats, mask)}))
        for row, k in enumerate(self.keys):
            self.store._index[k] = (name, row)
        self.written += len(self.keys)
        self.keys, self.feats, self.masks = [], [], []


class ShardError(RuntimeError):
    def __init__(self, path: Path, reason: str):
        self.path, self.reason = path, reason
        super().__init__(f"{path}: {reason}")


def _read_checked(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(features, mask) of a shard whose rows match its keys and whose bytes match its SHA-256."""
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata()
            feats, mask = f.get_tensor("features"), f.get_tensor("mask")
        keys = json.loads(meta["keys"])
    except FileNotFoundError:
        raise ShardError(path, "missing") from None
    except Exception as e:  # a truncated or garbled file fails inside safetensors in several ways
        raise ShardError(path, f"unreadable ({type(e).__name__}: {e})") from None
    if len(keys) != len(feats) or len(keys) != len(mask):
        raise ShardError(path, f"{len(keys)} keys but {len(feats)} rows")
    if _digest(feats, mask) != meta.get("sha256"):
        raise ShardError(path, "checksum mismatch (corrupt data)")
    return feats, mask


def _shard_keys(path: Path) -> list[str] | None:
    """The keys a shard's header lists, or None when the header cannot be read (its keys then count as missing)."""
    try:
        with safe_open(path, framework="pt") as f:
            return json.loads(f.metadata()["keys"])
    except Exception:
        return None


def _digest(feats: torch.Tensor, mask: torch.Tensor) -> str:
    h = hashlib.sha256(feats.contiguous().view(torch.uint8).numpy().tobytes() if feats.dtype != torch.uint8 else
                       feats.numpy().tobytes())
    h.update(np.ascontiguousarray(mask.to(torch.uint8).numpy()).tobytes())
    return h.hexdigest()

