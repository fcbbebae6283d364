"""What a run trains on (split, stats, cached features, heads, sampler, loader): shared by Stage 1 and Stage 2."""
from __future__ import annotations

from dataclasses import replace

import torch
from torch.utils.data import DataLoader

from vla_lib.commands import command_for
from vla_lib.data.normalization import NormStats, compute_stats
from vla_lib.data.sampler import DistributedWeightedSampler
from vla_lib.data.samples import build_index
from vla_lib.data.split import split_sessions
from vla_lib.errors import ConfigError
from vla_lib.models.modeling_policy import Stage1Policy
from vla_lib.train_state import RunStateError
from vla_lib.vlm.cache_build import build_cache, link_store, open_store
from vla_lib.vlm.feature_store import CacheMissError, FeatureTable


def load_data(cfg, say, is_main: bool, resume: dict | None = None):
    """(train index, val index, split, stats): the episode split and the training-split statistics. A resumed run
    keeps the split and statistics it started with (an added, removed or damaged recording cannot change them)."""
    index = build_index(cfg.data, verbose=is_main)  # prints each added and each skipped session
    if resume is None:
        train_ids, val_ids = split_sessions(index, cfg.data)
        stats = None
    else:
        train_ids, val_ids = resume["split"]["train"], resume["split"]["val"]
        lost = sorted(set(train_ids + val_ids) - set(index.sessions))
        if lost:
            raise RunStateError(f"sessions of the recorded split (of the run being resumed, or of the Stage-1 "
                                f"checkpoint) are not usable now: {lost} (see the skipped sessions above); restore them, or start "
                                "a new run with --run-name NAME")
        stats = NormStats.from_dict(resume["stats"])
    train_index, val_index = index.subset(train_ids), index.subset(val_ids)
    if len(val_index) == 0:
        raise RunStateError(f"the split left no validation samples ({len(train_ids)} usable session(s), "
                            f"data.val_fraction {cfg.data.val_fraction:g}): name validation sessions with "
                            "--set 'data.val_sessions=[SESSION_FOLDER]', or raise data.val_fraction (each of "
                            "the sensor and no-sensor groups gives one once it has 2 sessions), or record more")
    say(f"Train: {len(train_index)} samples / Val: {len(val_index)} samples (split by episode: "
        f"{len(train_ids)} / {len(val_ids)} sessions)")
    return train_index, val_index, {"train": train_ids, "val": val_ids}, stats or compute_stats(train_index)


def load_features(cfg, train_index, val_index, say):
    """(train FeatureTable, val FeatureTable, store) from the VL cache; a miss or damaged shard stops with the
    command that builds them (or encodes inline when cache.allow_inline_encoding)."""
    store = open_store(cfg)
    keys = list(train_index.table.cache_key) + list(val_index.table.cache_key)
    missing = store.missing(keys)
    if missing and not cfg.cache.allow_inline_encoding:
        raise CacheMissError(missing, store.dir, command_for(cfg, "cache"), store.bad_shards)
    if missing:
        say(f"{len(missing)} cache misses: encoding inline (cache.allow_inline_encoding)")
        build_cache(cfg)
        store = open_store(cfg)
    fix = command_for(cfg, "cache")
    link_store(cfg, store, replace=True)
    return FeatureTable(store, train_index.table.cache_key, fix), FeatureTable(store, val_index.table.cache_key, fix), \
        store


def build_model(cfg, stats, vl_dim: int) -> Stage1Policy:
    """The heads for features of width `vl_dim` (the backbone's hidden size, read from the store)."""
    if cfg.model.vl_dim not in (0, vl_dim):
        raise ConfigError(f"model.vl_dim is {cfg.model.vl_dim} but the feature store holds {vl_dim}-d features: "
                          "leave model.vl_dim unset (it comes from the backbone)")
    return Stage1Policy(replace(cfg.model, vl_dim=int(vl_dim)), **stats.model_buffers())


def make_sampler(train_index, acc, tc) -> DistributedWeightedSampler:
    """The weighted sampler of the training samples, each rank its own part of every epoch."""
    return DistributedWeightedSampler(train_index.table["weight"], num_replicas=acc.num_processes,
                                      rank=acc.process_index, seed=tc.seed)


def make_loader(train_set, sampler, tc, collate_fn, pin_memory: bool) -> DataLoader:
    """One loader for the whole run, its workers kept between epochs (starting them costs ~1 s an epoch). The
    sampler is set before each epoch's iter(): it runs in this process, so position and epoch are what we set."""
    # Its own generator: iter() on a loader without one draws from the global RNG, which a resumed run would
    # then draw at another point than the uninterrupted one. Workers hold no randomness (sample loading is
    # deterministic; sensor augmentation draws from (seed, epoch, index)): their seeds do not affect a resumed run.
    return DataLoader(train_set, batch_size=tc.batch_size, sampler=sampler,
                      num_workers=tc.num_workers, collate_fn=collate_fn, drop_last=True,
                      pin_memory=pin_memory, persistent_workers=tc.num_workers > 0,
                      generator=torch.Generator().manual_seed(tc.seed))
