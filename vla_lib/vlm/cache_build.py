"""Build the VL feature cache (`--mode cache`), distributed over the processes of `accelerate launch` / `torchrun`.

Each distinct VL input (views + instruction) is encoded once. The keys still missing from the store are split
across ranks (rank r takes every world-th); JPEG decoding, resizing and the image processor run in DataLoader
workers so that the accelerator does not wait on the CPU; each rank writes its own shards; rank 0 merges the index.
"""
from __future__ import annotations

import os
import time

import torch
from torch.utils.data import DataLoader, Dataset

from vla_lib.commands import command_for
from vla_lib.data.samples import build_index
from vla_lib.progress import logged
from vla_lib.vlm.feature_store import CacheMissError, FeatureStore
from vla_lib.vlm.interface import backbone_parts, load_backbone, resolve_device, resolve_dtype


def store_parts(cfg, backbone_parts: dict) -> dict:
    """Everything that changes a stored feature: the backbone's own parts (its identity: weights' bytes for a local
    folder, the id and pinned revision for a hub id; processor, template and library versions; how images are
    prepared), the resolved dtype (a CPU fp32 and a GPU bf16 store differ), pixel budget, pooling and views."""
    device = resolve_device(cfg.backbone.device)
    return {"kind": cfg.backbone.kind, **backbone_parts,
            "pixel_budget": cfg.backbone.image_resize_height * cfg.backbone.image_resize_width,
            "pooling": cfg.cache.pooling, "views": list(cfg.data.views),
            "dtype": str(resolve_dtype(cfg.backbone.dtype, device)).removeprefix("torch.")}


def open_store(cfg, create: bool = True) -> FeatureStore:
    """The store for this config, without loading the backbone's weights (training needs no VLM)."""
    return FeatureStore(cfg.cache.dir, store_parts(cfg, backbone_parts(cfg.backbone)), create=create)


def link_store(cfg, store: FeatureStore, replace: bool = False) -> None:
    """`<run_dir>/vl_cache` -> the store this run uses (stores live under cache.dir, shared and content-addressed).
    Training sets it (`replace`); a cache build only creates it, never repoints a run's link."""
    link = cfg.run_dir / "vl_cache"
    if link.resolve() == store.dir.resolve() or (link.is_symlink() and not replace):
        return
    link.parent.mkdir(parents=True, exist_ok=True)
    try:  # several ranks may get here at once: the first one wins, the result is the same
        if link.is_symlink():
            link.unlink()
        if not link.exists():
            link.symlink_to(os.path.relpath(store.dir.resolve(), link.parent.resolve()), target_is_directory=True)
    except (FileExistsError, FileNotFoundError):
        pass


class _EncodeInputs(Dataset):
    """Item = one distinct VL input, its images read in the worker by the backbone's reader (decoded and fitted for
    a CPU preparation; bytes, or decoded frames, for one on the device). A corrupt file raises, naming it."""

    def __init__(self, index, rows, read):
        self.index, self.rows, self.read = index, rows, read

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, k):
        i = self.rows[k]
        paths = self.index.view_paths(i)
        images = [self.read(p) for p in paths if p is not None]
        return self.index.table.at[i, "cache_key"], images, self.index.table.at[i, "instruction"], \
            [p is not None for p in paths]


def _collate(prepare):
    """`prepare`: the backbone's CPU preparation run in the workers, or None: the samples go as read (JPEG bytes or
    decoded frames) and are prepared on the device in the main process."""
    def collate(items):
        samples = [(ims, instr, mask) for _, ims, instr, mask in items]
        return [k for k, *_ in items], samples if prepare is None else prepare(samples)
    return collate


class _DeferredCopy:
    """A batch's features copied to the host without waiting: the copy is queued behind the batch's own work and
    awaited only when written, one batch later, so the device runs the next batch meanwhile."""

    def __init__(self, keys, feats, masks):
        self.keys, self.done = keys, None
        self.feats, self.masks = feats, masks
        if feats.is_cuda:  # into page-locked memory: a copy to pageable memory would block until the batch is done
            self.feats, self.masks = (torch.empty(t.shape, dtype=t.dtype, pin_memory=True).copy_(t, non_blocking=True)
                                      for t in (feats, masks))
            self.done = torch.cuda.Event()
            self.done.record()

    def write_to(self, writer) -> None:
        if self.done is not None:
            self.done.synchronize()
        writer.add(self.keys, self.feats, self.masks)


def _by_layout(index, rows: list[int]) -> list[int]:
    """Rows grouped by instruction and present views (stable within a group): batches then share one token and image
    layout, so the fast encoder compiles and captures a few shapes, not one per mixed batch, and nothing is padded."""
    def layout(i):
        return index.table.at[i, "instruction"], tuple(p is None for p in index.view_paths(i))
    return sorted(rows, key=layout)


def _healthy_store(cfg, backbone, state, say) -> FeatureStore:
    """The store for this backbone, its damaged shards (checksum, truncation) moved aside by rank 0 so that their keys
    are encoded again; every rank then sees the same entries."""
    store = FeatureStore(cfg.cache.dir, store_parts(cfg, backbone.parts()))
    if state.is_main_process:
        for moved in store.quarantine_bad_shards():
            say(f"  damaged shard moved aside, its entries will be rebuilt: {moved}")
    state.wait_for_everyone()
    store.refresh()
    return store


def _announce_index(cfg, state, say):
    """The sample index this build encodes, after the lines saying what the build runs with and what it holds."""
    say(f"Running in CACHE mode on {state.num_processes} process(es) ({state.device})")
    say(f"  sensor enabled: {cfg.data.sensor_enabled}, window: {cfg.data.sensor_window_size} samples = "
        f"{cfg.data.sensor_window_s * 1e3:.0f} ms; image resize: {cfg.backbone.image_resize_width}x"
        f"{cfg.backbone.image_resize_height}; priority weights: "
        + ", ".join(f"{g.name} {g.weight:g}x" for g in cfg.data.groups))
    index = build_index(cfg.data, verbose=state.is_main_process)
    weighted = index.table["weight"].sum()
    say(f"Integrated dataset: {len(index)} samples ({weighted:.0f} with priority datasets counted "
        f"{index.table['weight'].max():g}x), {index.table['cache_key'].nunique()} distinct VL inputs")
    return index


def _encode_rows(cfg, index, mine: list[int], backbone, store, rank: int, say) -> tuple:
    """Encode this rank's rows into its own shards: (seconds, first, loader wait s, encode-call s), `first` the
    (inputs, seconds) of the first batch, which compiles and captures, or None when the rank had nothing to do."""
    in_workers = backbone.preparer()  # None: prepared on the device here, the workers only read
    decode = in_workers is None and cfg.cache.worker_decode
    loader = DataLoader(_EncodeInputs(index, mine, backbone.image_reader(decode)), batch_size=cfg.cache.batch_size,
                        num_workers=cfg.cache.num_workers,
                        pin_memory=backbone.device.type == "cuda" and (decode or in_workers is not None),
                        collate_fn=_collate(in_workers))
    writer = store.writer(rank, cfg.cache.shard_size)
    start = time.time()
    pending, first = None, None  # first: (inputs, seconds) of the first batch, which compiles and captures
    waited = in_encode = 0.0  # after the first batch: host seconds waiting on the loader, inside encode calls
    asked = time.time()
    for keys, inputs in logged(loader, len(loader), "encoding batch", say):
        got = time.time()
        if in_workers is None:
            inputs = backbone.prepare(inputs)
        encoded = _DeferredCopy(keys, *backbone.encode(inputs, cfg.cache.pooling))
        if first:
            waited, in_encode = waited + got - asked, in_encode + time.time() - got
        if pending is not None:
            pending.write_to(writer)
        pending = encoded
        first = first or (len(keys), time.time() - start)
        asked = time.time()
    if pending is not None:
        pending.write_to(writer)
    writer.flush()
    return time.time() - start, first, waited, in_encode


def build_cache(cfg, log=print) -> dict:
    from accelerate import PartialState

    cfg.validate()
    state = PartialState(cpu=not torch.cuda.is_available())
    main = state.is_main_process
    say = log if main else (lambda *a, **k: None)
    index = _announce_index(cfg, state, say)

    cfg.backbone.device = str(state.device) if cfg.backbone.device == "auto" else cfg.backbone.device
    backbone = load_backbone(cfg.backbone)
    store = _healthy_store(cfg, backbone, state, say)
    say(f"VL model {backbone.name} ready ({backbone.dtype}, pixel budget {backbone.pixel_budget:,} per view, "
        f"{backbone.describe()}); store {store.dir}")
    unique = index.unique_cache_keys()
    todo = _by_layout(index, [int(i) for i, k in zip(unique["index"], unique["cache_key"]) if k not in store])
    mine = todo[state.process_index::state.num_processes]
    say(f"{len(unique) - len(todo)} cached, {len(todo)} to encode ({len(mine)} on this rank)")
    # Every rank must split the same `todo`: without this barrier a rank that loads its backbone late sees the
    # shards an early rank already wrote, splits a shorter list, and some keys fall to no rank.
    state.wait_for_everyone()
    elapsed, first, waited, in_encode = _encode_rows(cfg, index, mine, backbone, store, state.process_index, say)
    warmup = backbone.warmup_s
    if warmup:
        say(f"  one-off compile and capture: {warmup:.1f} s ({backbone.describe()})")
    steady = (len(mine) - first[0]) / (elapsed - first[1]) if first and len(mine) > first[0] else 0.0
    state.wait_for_everyone()
    total = store.merge_index() if main else len(store)
    if main:
        link_store(cfg, store)
    if main and (lost := store.missing(unique["cache_key"])):
        raise CacheMissError(lost, store.dir, command_for(cfg, "cache"))
    rate = len(mine) * state.num_processes / elapsed if elapsed > 0 and mine else 0.0
    say(f"Cache build complete: {total} entries, {len(todo)} encoded in {elapsed:.1f} s "
        f"({rate:.1f} samples/s over {state.num_processes} process(es); after the first batch "
        f"{steady:.1f}/s per process, {waited:.1f} s of it waiting on the loader). Train on it with: "
        + command_for(cfg, "train"))
    return {"entries": total, "encoded": len(todo), "seconds": elapsed, "samples_per_s": rate,
            "first_batch_s": first[1] if first else 0.0, "steady_samples_per_s_per_process": steady,
            "loader_wait_s": waited, "encoder_warmup_s": warmup, "encode_call_s": in_encode,
            "store": str(store.dir), "unique_inputs": len(unique), "samples": len(index)}


def verify(cfg, log=print) -> int:
    """Check the store these settings train on: every shard's checksum, and that it holds every sample's entry.
    Exit code 0 only for a complete, healthy store; a missing, damaged or incomplete one is an expected failure
    (exit code 2, with the command that builds it), not "0 problems"."""
    store = open_store(cfg, create=False)
    if not store.dir.exists():
        log(f"no feature store for these settings: {store.dir} does not exist (pixel budget "
            f"{store.parts['pixel_budget']:,}, dtype {store.parts['dtype']}). Build it with: {command_for(cfg, 'cache')}")
        return 2
    problems = store.verify()
    index = build_index(cfg.data)
    missing = store.missing(index.table.cache_key)
    log(f"{store.dir}: {len(store)} entries, {len(problems)} damaged shard(s), "
        f"{len(missing)} of {index.table.cache_key.nunique()} sample inputs missing")
    for p in problems:
        log("  " + p)
    if problems or missing:
        log(f"rebuild what is damaged or missing with: {command_for(cfg, 'cache')}")
        return 2
    return 0
