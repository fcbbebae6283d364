"""Build the VL feature cache (`--mode cache`), distributed over the processes of `accelerate launch` / `torchrun`.

Each distinct VL input (views + instruction) is encoded once. The keys still missing from the store are split
across ranks (rank r takes every world-th); JPEG decoding, resizing and the image processor run in DataLoader
workers so that the accelerator does not wait on the CPU; each rank writes its own shards; rank 0 merges the index.
"""
from __future__ import annotations

import hashlib
import time

import torch
from torch.utils.data import DataLoader, Dataset

from vla_lib.data.recorder_formats import load_image
from vla_lib.data.samples import build_index
from vla_lib.vlm.backbone import backbone_fingerprint, load_backbone
from vla_lib.vlm.encode import encode, prepare_inputs
from vla_lib.vlm.feature_store import FeatureStore
from vla_lib.vlm.gpu_prepare import decode_views, read_bytes, resolve_image_prep


def store_parts(cfg, chat_template: str) -> dict:
    """Everything that changes a stored feature."""
    return {"backbone": backbone_fingerprint(cfg.backbone), "pixel_budget":
            cfg.backbone.image_resize_height * cfg.backbone.image_resize_width, "pooling": cfg.cache.pooling,
            "chat_template": hashlib.sha1(chat_template.encode()).hexdigest()[:16], "views": list(cfg.data.views),
            "dtype": cfg.backbone.dtype,
            # GPU-prepared pixels differ slightly from the CPU path's: their own store (CPU stores keep their key)
            **({"image_prep": "gpu"} if _image_prep(cfg) == "gpu" else {})}


def _image_prep(cfg) -> str:
    from vla_lib.vlm.backbone import resolve_device

    return resolve_image_prep(cfg.backbone.image_prep, resolve_device(cfg.backbone.device))


def open_store(cfg) -> FeatureStore:
    """The store for this config, without loading the backbone's weights (training needs no VLM)."""
    from transformers import AutoProcessor

    from vla_lib.vlm.tiny_model import build_tiny_model

    source = build_tiny_model(cfg.backbone.tiny_model_dir) if (cfg.backbone.name_or_path == "tiny" or
                                                                cfg.backbone.random_weights) else cfg.backbone.name_or_path
    processor = AutoProcessor.from_pretrained(source, revision=cfg.backbone.revision)
    return FeatureStore(cfg.cache.dir, store_parts(cfg, processor.chat_template))


class _EncodeInputs(Dataset):
    """Item = one distinct VL input, decoded and fitted to the budget in the worker; with the preparation on the
    device (`raw`), the worker only reads the files' bytes."""

    def __init__(self, index, rows, raw: bool = False, decode: bool = False):
        self.index, self.rows, self.raw, self.decode = index, rows, raw, decode

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, k):
        i = self.rows[k]
        paths = self.index.view_paths(i)
        read = read_bytes if self.raw else load_image  # a corrupt file raises, naming it (decoded: here; raw: on use)
        images = [read(p) for p in paths if p is not None]
        if self.raw and self.decode:  # libjpeg here, (3, H, W) uint8 to the device
            images = decode_views(images, "cpu")
        return self.index.table.at[i, "cache_key"], images, self.index.table.at[i, "instruction"], \
            [p is not None for p in paths]


def _collate(processor, budget, pixel_dtype, raw: bool = False):
    def collate(items):
        keys = [k for k, *_ in items]
        samples = [(ims, instr, mask) for _, ims, instr, mask in items]
        return keys, samples if raw else prepare_inputs(processor, samples, budget, pixel_dtype)
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


def build_cache(cfg, log=print) -> dict:
    from accelerate import PartialState
    from tqdm.auto import tqdm

    state = PartialState(cpu=not torch.cuda.is_available())
    main = state.is_main_process
    say = log if main else (lambda *a, **k: None)
    say(f"Running in CACHE mode on {state.num_processes} process(es) ({state.device})")
    say(f"  sensor enabled: {cfg.data.sensor_enabled}, window: {cfg.data.sensor_window_size} samples = "
        f"{cfg.data.sensor_window_s * 1e3:.0f} ms; image resize: {cfg.backbone.image_resize_width}x"
        f"{cfg.backbone.image_resize_height}; priority weights: "
        + ", ".join(f"{g.name} {g.weight:g}x" for g in cfg.data.groups))
    index = build_index(cfg.data, verbose=main)
    weighted = index.table["weight"].sum()
    say(f"Integrated dataset: {len(index)} samples ({weighted:.0f} with priority datasets counted "
        f"{index.table['weight'].max():g}x), {index.table['cache_key'].nunique()} distinct VL inputs")
    for s in index.skipped:
        say(f"  skipped {s['session']}: {s['file']}: {s['reason']}")

    cfg.backbone.device = str(state.device) if cfg.backbone.device == "auto" else cfg.backbone.device
    backbone = load_backbone(cfg.backbone)
    store = FeatureStore(cfg.cache.dir, store_parts(cfg, backbone.processor.chat_template))
    say(f"VL model {backbone.name} ready ({backbone.dtype}, pixel budget {backbone.pixel_budget:,} per view, images "
        f"prepared on the {'device' if backbone.prep is not None else 'CPU'}, "
        f"{'fast encoder: ' + backbone.fast.describe() if backbone.fast else 'stock forward'}); store {store.dir}")
    unique = index.unique_cache_keys()
    todo = _by_layout(index, [int(i) for i, k in zip(unique["index"], unique["cache_key"]) if k not in store])
    mine = todo[state.process_index::state.num_processes]
    say(f"{len(unique) - len(todo)} cached, {len(todo)} to encode ({len(mine)} on this rank)")
    # Every rank must split the same `todo`: without this barrier a rank that loads its backbone late sees the
    # shards an early rank already wrote, splits a shorter list, and some keys fall to no rank.
    state.wait_for_everyone()
    raw = backbone.prep is not None  # JPEG bytes to the device (vlm/gpu_prepare.py)
    decode = raw and cfg.cache.worker_decode
    loader = DataLoader(_EncodeInputs(index, mine, raw, decode), batch_size=cfg.cache.batch_size,
                        num_workers=cfg.cache.num_workers,
                        pin_memory=backbone.device.type == "cuda" and (decode or not raw),
                        collate_fn=_collate(backbone.processor, backbone.pixel_budget, backbone.dtype, raw))
    writer = store.writer(state.process_index, cfg.cache.shard_size)
    start = time.time()
    pending, first = None, None  # first: (inputs, seconds) of the first batch, which compiles and captures
    waited = in_encode = 0.0  # after the first batch: host seconds waiting on the loader, inside encode calls
    asked = time.time()
    for keys, inputs in tqdm(loader, disable=not main, desc="encoding"):
        got = time.time()
        if raw:
            inputs = backbone.prep(inputs, backbone.pixel_budget)
        encoded = _DeferredCopy(keys, *encode(backbone, inputs, cfg.cache.pooling))
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
    elapsed = time.time() - start
    warmup = backbone.fast.warmup_s if backbone.fast is not None else 0.0
    if backbone.fast is not None and backbone.fast.cuda_graphs:
        say(f"  {len(backbone.fast.graphs)} batch layout(s) compiled and captured as CUDA graphs in {warmup:.1f} s")
    steady = (len(mine) - first[0]) / (elapsed - first[1]) if first and len(mine) > first[0] else 0.0
    state.wait_for_everyone()
    total = store.merge_index() if main else len(store)
    if main and (lost := store.missing(unique["cache_key"])):
        raise RuntimeError(f"Cache build incomplete: {len(lost)} distinct input(s) were encoded by no rank "
                           f"(first: {lost[0]}) in {store.dir}; rerun --mode cache to encode them.")
    rate = len(mine) * state.num_processes / elapsed if elapsed > 0 and mine else 0.0
    say(f"Cache build complete: {total} entries, {len(todo)} encoded in {elapsed:.1f} s "
        f"({rate:.1f} samples/s over {state.num_processes} process(es); after the first batch "
        f"{steady:.1f}/s per process, {waited:.1f} s of it waiting on the loader). "
        "You can now run training with --mode train.")
    return {"entries": total, "encoded": len(todo), "seconds": elapsed, "samples_per_s": rate,
            "first_batch_s": first[1] if first else 0.0, "steady_samples_per_s_per_process": steady,
            "loader_wait_s": waited, "encoder_warmup_s": warmup, "encode_call_s": in_encode,
            "store": str(store.dir), "unique_inputs": len(unique), "samples": len(index)}


def main(cfg, verify_only: bool = False) -> int:
    if verify_only:
        store = open_store(cfg)
        problems = store.verify()
        print(f"{store.dir}: {len(store)} entries, {len(problems)} problem(s)")
        for p in problems:
            print("  " + p)
        return 1 if problems else 0
    build_cache(cfg)
    return 0
