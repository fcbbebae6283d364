"""The whole VL update, from camera JPEG bytes or uint8 frames to pooled features on the device.

    python benchmarks/vl_end_to_end.py                   # CPU, tiny model: checks the device preparation only
    python benchmarks/vl_end_to_end.py --random-weights  # GPU: the published 3B architecture, stock beside fast

First a check: the device preparation (vlm/gpu_prepare.py) against the CPU reference (qwen_vl_utils + the image
processor) on camera-like frames at every size, from frames and from JPEG bytes: identical token ids, masks and grids,
pixel values within the stated tolerance (2 levels of 255 at most and a mean under 0.001 normalised units; from JPEGs
on CUDA against the reference fed nvJPEG's decoded frames, since nvJPEG decodes differently from libjpeg: that
difference is printed beside, not bounded); the exit status is 1 on a mismatch.

On a GPU it then times, at batch 1, each update end to end (from what the caller holds to pooled features on the
device, synchronised): stock (CPU preparation + transformers' forward) and fast (device preparation + the fast
encoder), plus the mixed rows, from JPEG bytes (CPU path: PIL decodes them) and from uint8 frames, interleaved in
rounds in one process; each row the median and the spread (min - max) of `--rounds` x `--repeats` timed updates. A
breakdown of the fast JPEG update and a profile of its kernels follow.
"""
from __future__ import annotations

import argparse
import io
import sys
import time

import numpy as np
import torch

from vla_lib.config import BackboneConfig
from vla_lib.vlm.qwen.backbone import load_backbone, set_pixel_budget
from vla_lib.vlm.qwen.encode import encode, prepare_inputs
from vla_lib.vlm.qwen.gpu_prepare import DeviceImagePrep, decode_views, prepare_pixels, PatchSpec

INSTRUCTION = "Perform the insertion task"


def camera_frames(n: int, width: int, height: int, seed: int = 0) -> list[np.ndarray]:
    """Camera-like content (smooth shading, edges, sensor noise): JPEG size and decode time as a real view's, which
    pure noise would not give."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    out = []
    for k in range(n):
        img = np.stack([127 + 90 * np.sin(xx / (17 + 9 * c + k) * (width / 640) ** -1 + yy / (29 + 5 * c) + k)
                        for c in range(3)], -1)
        img[((yy // 37 + xx // 53) % 5 == 0)] = rng.integers(0, 255, 3)
        out.append((img + rng.normal(0, 6, img.shape)).clip(0, 255).astype(np.uint8))
    return out


def jpegs(frames, quality: int = 90) -> list[bytes]:
    from PIL import Image

    out = []
    for f in frames:
        buf = io.BytesIO()
        Image.fromarray(f).save(buf, format="JPEG", quality=quality)
        out.append(buf.getvalue())
    return out


def pil_decode(data: list[bytes]):
    from PIL import Image

    return [Image.open(io.BytesIO(d)).convert("RGB") for d in data]


def check(bb, sizes, views, device) -> bool:
    """Device preparation against the CPU reference; True when within the tolerance."""
    ok = True
    prep = DeviceImagePrep(bb.processor, device, torch.float32)
    level = 1 / (255 * min(PatchSpec.from_processor(bb.processor).std))
    for w, h in sizes:
        set_pixel_budget(bb, 640 * 360)
        frames = camera_frames(views, w, h, seed=w)
        data = jpegs(frames)
        samples = lambda ims: [(ims, INSTRUCTION, [True] * views)]  # noqa: E731
        cpu_decoded = [np.asarray(im) for im in pil_decode(data)]
        cases = [("frames", frames, frames), ("jpeg", data, cpu_decoded)]
        if torch.device(device).type == "cuda":
            # the preparation after nvJPEG, against the reference fed nvJPEG's own frames (exact but for rounding),
            # then nvJPEG's frames against libjpeg's (PIL's): the decoders' difference, reported
            nv = [f.permute(1, 2, 0).cpu().numpy() for f in decode_views(data, device)]
            cases = [("frames", frames, frames), ("jpeg (nvJPEG-decoded reference)", data, nv)]
            d = np.abs(np.stack(nv).astype(np.int16) - np.stack(cpu_decoded)).astype(np.float64)
            print(f"nvJPEG vs libjpeg decode, {w}x{h}: |diff| in levels mean {d.mean():.2f} p99 "
                  f"{np.percentile(d, 99):.0f} max {d.max():.0f}; {100 * (d > 2).mean():.1f} % of values differ by more "
                  f"than 2 levels", flush=True)
            libjpeg = DeviceImagePrep(bb.processor, device, torch.float32, jpeg_on_device=False)
            ref = prepare_inputs(bb.processor, samples(cpu_decoded), bb.pixel_budget)
            e = (ref.batch["pixel_values"] - prep(samples(data), bb.pixel_budget).batch["pixel_values"].cpu()).abs()
            e2 = (ref.batch["pixel_values"] - libjpeg(samples(data), bb.pixel_budget).batch["pixel_values"].cpu()).abs()
            print(f"  prepared from JPEG vs the CPU path (PIL decode), normalised units: nvJPEG |diff| mean "
                  f"{float(e.mean()):.4f} p99 {float(e.flatten()[:2**24].quantile(0.99)):.4f} max {float(e.max()):.4f}; "
                  f"libjpeg on the CPU + device prep: mean {float(e2.mean()):.4f} max {float(e2.max()):.4f}", flush=True)
        for source, given, reference in cases:
            ref = prepare_inputs(bb.processor, samples(reference), bb.pixel_budget)
            got = prep(samples(given), bb.pixel_budget)
            same = all(torch.equal(ref.batch[k], got.batch[k].cpu()) for k in ref.batch if k != "pixel_values")
            d = (ref.batch["pixel_values"] - got.batch["pixel_values"].float().cpu()).abs()
            max_levels, mean_bound = 2, 0.001
            good = same and float(d.max()) <= max_levels * level + 1e-4 and float(d.mean()) <= mean_bound
            ok &= good
            print(f"check {w}x{h} from {source} on {device}: token grid {ref.batch['image_grid_thw'][0].tolist()}, "
                  f"text side {'identical' if same else 'DIFFERENT'}; pixel values |diff| mean {float(d.mean()):.4f} "
                  f"p99 {float(d.flatten()[:2**24].quantile(0.99)):.4f} max {float(d.max()):.4f} normalised units "
                  f"(1 level = {level:.4f}; bound max {max_levels} levels, mean {mean_bound}) -> "
                  f"{'ok' if good else 'MISMATCH'}", flush=True)
    set_pixel_budget(bb, 640 * 360)
    return ok


def _sync():
    torch.cuda.synchronize()


def time_rows(rows: dict, rounds: int, repeats: int, warmup: int) -> dict:
    """Interleaved: every row timed `repeats` times in each round, rows in turn (drift hits all alike)."""
    for fn in rows.values():
        for _ in range(warmup):
            fn()
        _sync()
    ms = {name: [] for name in rows}
    for _ in range(rounds):
        for name, fn in rows.items():
            for _ in range(repeats):
                _sync()
                t0 = time.perf_counter()
                fn()
                _sync()
                ms[name].append((time.perf_counter() - t0) * 1e3)
    return ms


def fmt(v: list[float]) -> str:
    return f"{np.median(v):7.1f} ({min(v):.1f}-{max(v):.1f})"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--random-weights", action="store_true")
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--views", type=int, default=5)
    ap.add_argument("--sizes", nargs="*", default=["640x360", "1280x720"])
    ap.add_argument("--full-budget-sizes", nargs="*", default=["1280x720"],
                    help="also timed with the pixel budget at the camera size (1280x720: 1125 tokens a view)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--no-stock", action="store_true", help="fast rows only")
    ap.add_argument("--profile", action="store_true", help="kernel profile of the fast update from JPEGs")
    args = ap.parse_args()
    sizes = [tuple(map(int, s.split("x"))) for s in args.sizes]
    cuda = torch.cuda.is_available()
    torch.manual_seed(0)
    cfg = BackboneConfig(name_or_path=args.model, random_weights=args.random_weights, fast_vision="off",
                         image_prep="cpu")
    bb = load_backbone(cfg)
    print(f"device: {torch.cuda.get_device_name() if cuda else 'cpu'}, torch {torch.__version__}, backbone "
          f"{bb.name}, {args.views} views", flush=True)
    ok = check(bb, sizes, args.views, "cpu")
    if cuda:
        ok &= check(bb, sizes, args.views, "cuda")
    if not ok:
        print("MISMATCH between the device preparation and the processor")
        return 1
    if not cuda:
        print("no GPU: check only")
        return 0

    from vla_lib.vlm.qwen.fast_vision import FastEncoder

    fast = FastEncoder(bb.model, "auto", compile=True, cuda_graphs=True)
    unpadded = FastEncoder(bb.model, "auto", compile=True, cuda_graphs=True)
    unpadded.mlps = None  # the vision MLP at its own width (3420), not padded to MLP_PAD: for comparison
    gpu_prep = DeviceImagePrep(bb.processor, bb.device, bb.dtype)
    libjpeg_prep = DeviceImagePrep(bb.processor, bb.device, bb.dtype, jpeg_on_device=False)
    samples = lambda ims: [(ims, INSTRUCTION, [True] * args.views)]  # noqa: E731

    def update(encoder, prep, source):
        def run():
            bb.fast = encoder
            ims = source() if callable(source) else source
            inputs = (gpu_prep(samples(ims), bb.pixel_budget) if prep == "gpu" else
                      libjpeg_prep(samples(ims), bb.pixel_budget) if prep == "gpu_libjpeg" else
                      prepare_inputs(bb.processor, samples(ims), bb.pixel_budget, bb.dtype))
            return encode(bb, inputs)
        return run

    summary = []
    full = [tuple(map(int, s.split("x"))) for s in args.full_budget_sizes]
    for w, h, budget in [(w, h, 640 * 360) for w, h in sizes] + [(w, h, w * h) for w, h in full]:
        # params/stage1.yaml's 640x360 budget: 616x336 = 264 tokens a view at any camera size; or the camera's own size
        set_pixel_budget(bb, budget)
        frames = camera_frames(args.views, w, h, seed=1)
        data = jpegs(frames)
        label = f"{w}x{h}" + ("" if budget == 640 * 360 else "@full")
        print(f"\n{args.views} x {w}x{h}, pixel budget {budget}, JPEG {sum(map(len, data)) / len(data) / 1e3:.0f} kB a "
              f"view, batch 1", flush=True)
        # features: the device preparation's against the CPU path's, through the same fast encoder
        a = update(fast, "cpu", lambda: pil_decode(data))()[0]
        b = update(fast, "gpu", data)()[0]
        s = update(None, "cpu", lambda: pil_decode(data))()[0]
        rel = lambda x, y: float((x - y).norm() / y.norm())  # noqa: E731
        c = update(fast, "gpu_libjpeg", data)()[0]
        print(f"pooled features, fast encoder, GPU- vs CPU-prepared: relative distance {rel(b, a):.4f} with nvJPEG, "
              f"{rel(c, a):.4f} with libjpeg "
              f"(fast vs stock, both CPU-prepared: {rel(a, s):.4f})", flush=True)
        rows = {}
        if not args.no_stock:
            rows["stock: CPU prep + stock forward, from JPEG"] = update(None, "cpu", lambda: pil_decode(data))
            rows["stock: CPU prep + stock forward, from frames"] = update(None, "cpu", frames)
        rows["fast encoder, CPU prep, from JPEG"] = update(fast, "cpu", lambda: pil_decode(data))
        rows["fast encoder, CPU prep, from frames"] = update(fast, "cpu", frames)
        rows["fast: GPU prep + fast encoder, from JPEG"] = update(fast, "gpu", data)
        rows["fast: GPU prep + fast encoder, from frames"] = update(fast, "gpu", frames)
        rows["fast: GPU prep (libjpeg decode) + fast, from JPEG"] = update(fast, "gpu_libjpeg", data)
        # parts of the fast JPEG update, each synchronised
        prepared = gpu_prep(samples(data), bb.pixel_budget)
        spec = PatchSpec.from_processor(bb.processor)
        decoded = decode_views(data, bb.device)
        rows["  part: nvJPEG decode"] = lambda: decode_views(data, bb.device)
        rows["  part: resize + normalise + patch layout"] = lambda: prepare_pixels(decoded, bb.pixel_budget, spec,
                                                                                 bb.dtype)
        rows["  part: whole GPU prep (decode .. text side)"] = lambda: gpu_prep(samples(data), bb.pixel_budget)
        rows["  part: fast encoder alone (inputs prepared)"] = lambda: (setattr(bb, "fast", fast),
                                                                       encode(bb, prepared))
        rows["  part: fast encoder alone, vision MLP unpadded"] = lambda: (setattr(bb, "fast", unpadded),
                                                                          encode(bb, prepared))
        rows["  part: CPU prep alone, from JPEG"] = lambda: prepare_inputs(bb.processor, samples(pil_decode(data)),
                                                                          bb.pixel_budget, bb.dtype)
        ms = time_rows(rows, args.rounds, args.repeats, args.warmup)
        n = args.rounds * args.repeats
        print(f"{'row':52s} median ms (min-max) over {n} updates in {args.rounds} rounds")
        for name, v in ms.items():
            print(f"{name:52s} {fmt(v)}", flush=True)
            summary.append((label, name, float(np.median(v)), min(v), max(v), n))
        if args.profile:
            profile(update(fast, "gpu", data), label)
    bb.fast = None
    print("\nsummary (size, row, median, min, max, n)")
    for row in summary:
        print(f"{row[0]:14s} {row[1]:52s} {row[2]:7.1f} {row[3]:7.1f} {row[4]:7.1f} {row[5]:3d}")
    return 0


def profile(fn, label):
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    for _ in range(3):
        fn()
    _sync()
    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            fn()
        _sync()
    print(f"\nprofile of 5 fast updates from JPEG, {label} (self times):")
    print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=14, max_name_column_width=60))
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=14, max_name_column_width=60))


if __name__ == "__main__":
    sys.exit(main())
