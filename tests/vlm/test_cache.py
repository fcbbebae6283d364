"""The tiny offline Qwen2.5-VL, the message path, pooling and the feature store."""
import pytest
import torch
from PIL import Image

from vla_lib.config import RunConfig
from vla_lib.data.samples import build_index
from vla_lib.vlm.cache_build import build_cache, open_store
from vla_lib.vlm.interface import load_backbone
from vla_lib.vlm.qwen.encode import encode, prepare_inputs


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture
def cfg(synth_root, tiny_dir, tmp_path):
    c = RunConfig.from_yaml("params/ci.yaml")
    c.data.root = str(synth_root)
    c.backbone.tiny_model_dir = tiny_dir
    c.cache.dir = str(tmp_path / "cache")
    c.cache.shard_size = 8
    return c


def test_pixel_budget_gives_the_seed_token_count(cfg):
    cfg.backbone.image_resize_height, cfg.backbone.image_resize_width = 360, 640
    bb = load_backbone(cfg.backbone)
    for size in [(640, 360), (1280, 720)]:
        im = Image.new("RGB", size, (120, 30, 60))
        inputs = prepare_inputs(bb.processor, [([im], "Perform the insertion task", [True])], bb.pixel_budget)
        assert inputs.batch["image_grid_thw"].tolist() == [[1, 24, 44]]  # 336 x 616 pixels
        assert int((inputs.batch["input_ids"] == bb.config.image_token_id).sum()) == 264


def test_batched_pooled_features_equal_single_forward(cfg):
    bb = load_backbone(cfg.backbone)
    index = build_index(cfg.data)
    rows = [0, len(index) - 1, 60]  # different sessions; the last one has a masked View5 slot when from part1
    samples = []
    for i in rows:
        paths = index.view_paths(i)
        samples.append(([Image.open(p).convert("RGB") for p in paths if p is not None],
                        index.table.instruction[i] + (" please" if i == 60 else ""), [p is not None for p in paths]))
    batched, mask = encode(bb, prepare_inputs(bb.processor, samples, bb.pixel_budget))
    for k, s in enumerate(samples):
        single, smask = encode(bb, prepare_inputs(bb.processor, [s], bb.pixel_budget))
        torch.testing.assert_close(batched[k], single[0], atol=1e-4, rtol=1e-4)
        assert (mask[k] == smask[0]).all()
    # an independent forward of the stock model: the per-view means by hand
    s = samples[0]
    inputs = prepare_inputs(bb.processor, [s], bb.pixel_budget)
    hidden = bb.model.model(**inputs.batch).last_hidden_state[0]
    img = hidden[inputs.batch["input_ids"][0] == bb.config.image_token_id]
    n = img.shape[0] // sum(s[2])
    torch.testing.assert_close(batched[0, 0], img[:n].mean(0), atol=1e-4, rtol=1e-4)
    assert batched.shape[1] == len(cfg.data.views) + 1


def test_store_keys_miss_on_any_input_change(cfg):
    summary = build_cache(cfg, log=lambda *a: None)
    assert summary["encoded"] == summary["unique_inputs"] > 0
    store = open_store(cfg)
    index = build_index(cfg.data)
    assert not store.missing(index.table.cache_key)
    again = build_cache(cfg, log=lambda *a: None)
    assert again["encoded"] == 0
    cfg.backbone.image_resize_width = 280  # another pixel budget -> another store, all missing
    assert open_store(cfg).missing(index.table.cache_key)
    cfg.backbone.image_resize_width = 308
    cfg.data.groups[0].instruction = "Insert somewhere else"
    changed = build_index(cfg.data)
    assert set(store.missing(changed.table.cache_key)) == set(
        changed.table.cache_key[changed.table.group == cfg.data.groups[0].name])


def test_killed_build_reruns_only_the_rest_and_verify_finds_corruption(cfg):
    store = open_store(cfg)
    index = build_index(cfg.data)
    keys = list(dict.fromkeys(index.table.cache_key))
    writer = store.writer(0, shard_size=8)
    writer.add(keys[:8], torch.zeros(8, 6, 64), torch.ones(8, 6, dtype=torch.bool))  # a flushed shard, then "kill"
    summary = build_cache(cfg, log=lambda *a: None)
    assert summary["encoded"] == len(keys) - 8
    store = open_store(cfg)
    assert store.verify() == []
    shard = sorted(store.dir.glob("*.safetensors"))[1]
    raw = bytearray(shard.read_bytes())
    raw[-10] ^= 0xFF
    shard.write_bytes(bytes(raw))
    problems = store.verify()
    assert len(problems) == 1 and shard.name in problems[0] and "checksum" in problems[0]
    shard.write_bytes(bytes(raw[: len(raw) // 2]))
    assert shard.name in store.verify()[0]


def test_seed_cache_command_runs(cfg, tmp_path):
    from vla_lib.cli import main

    args = ["--mode", "cache", "--params", "params/ci.yaml", "--sensor-enabled", "--sensor-window-size", "65",
            "--image-resize-height", "168", "--image-resize-width", "308", "--data-root", cfg.data.root,
            "--cache-dir", cfg.cache.dir, "--set", f"backbone.tiny_model_dir={cfg.backbone.tiny_model_dir}"]
    assert main(args) == 0
    assert main(["--mode", "verify"] + args[2:]) == 0


@pytest.mark.slow
def test_two_process_cache_build_writes_disjoint_shards_and_a_complete_index(cfg, tmp_path):
    import json
    import os
    import subprocess
    import sys

    from safetensors import safe_open

    cfg.backbone.tiny_model_dir = str(tmp_path / "fresh_tiny")  # both ranks build it at once: must not clash
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "vla_lib", "--mode", "cache",
           "--params", "params/ci.yaml", "--data-root", cfg.data.root, "--cache-dir", cfg.cache.dir,
           "--set", f"backbone.tiny_model_dir={cfg.backbone.tiny_model_dir}", "--set", "cache.shard_size=8"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "on 2 process(es)" in done.stdout and "Cache build complete" in done.stdout
    store = open_store(cfg)
    keys = {}
    for rank in (0, 1):
        shards = sorted(store.dir.glob(f"rank{rank}-*.safetensors"))
        assert shards, f"rank {rank} wrote no shard"
        keys[rank] = set()
        for shard in shards:
            with safe_open(shard, framework="pt") as f:
                keys[rank] |= set(json.loads(f.metadata()["keys"]))
    assert not keys[0] & keys[1]
    index = build_index(cfg.data)
    assert set(json.loads((store.dir / "index.json").read_text())) == set(index.table.cache_key)
    assert store.verify() == []


@pytest.mark.parametrize("damage", ["flip_byte", "truncate", "delete"])
def test_damaged_shards_count_as_missing_stop_training_and_get_rebuilt(cfg, damage):
    """A shard's checksum is checked when it is first opened; its keys then count as missing, reading them
    raises with the command that rebuilds them, and --mode cache rebuilds exactly those."""
    from vla_lib.vlm.feature_store import CacheMissError, FeatureTable

    build_cache(cfg, log=lambda *a: None)
    index = build_index(cfg.data)
    store = open_store(cfg)
    good = {k: store.get([k])[0] for k in index.table.cache_key.unique()}
    shard = sorted(store.dir.glob("*.safetensors"))[0]
    from safetensors import safe_open
    with safe_open(shard, framework="pt") as f:
        import json
        lost = set(json.loads(f.metadata()["keys"]))
    raw = bytearray(shard.read_bytes())
    if damage == "flip_byte":
        raw[-10] ^= 0xFF
        shard.write_bytes(bytes(raw))
    elif damage == "truncate":
        shard.write_bytes(bytes(raw[: len(raw) // 2]))
    else:
        shard.unlink()
    store = open_store(cfg)
    assert set(store.missing(index.table.cache_key)) == lost
    with pytest.raises(CacheMissError, match="--mode cache") as e:
        FeatureTable(store, index.table.cache_key, "python -m vla_lib --mode cache --params x.yaml")
    if damage != "delete":
        assert shard.name in str(e.value)
    summary = build_cache(cfg, log=lambda *a: None)
    assert summary["encoded"] == len(lost)
    store = open_store(cfg)
    assert not store.missing(index.table.cache_key) and store.verify() == []
    for k, f in good.items():
        torch.testing.assert_close(store.get([k])[0], f)


def test_fingerprint_covers_dtype_processor_and_versions(cfg):
    """The resolved dtype, the image processor's configuration and the resizing libraries' versions are
    part of the store's identity."""
    from transformers import AutoProcessor

    from vla_lib.vlm.cache_build import store_parts
    from vla_lib.vlm.qwen.backbone import backbone_fingerprint, backbone_source, processor_parts

    base = open_store(cfg, create=False)
    assert base.parts["dtype"] == "float32" and set(base.parts["versions"]) == {"transformers", "qwen-vl-utils"}
    cfg.backbone.dtype = "bf16"
    assert open_store(cfg, create=False).dir != base.dir
    cfg.backbone.dtype = "auto"
    processor = AutoProcessor.from_pretrained(backbone_source(cfg.backbone))

    def parts():
        return store_parts(cfg, {"backbone": backbone_fingerprint(cfg.backbone), **processor_parts(processor)})
    assert parts() == base.parts
    processor.image_processor.image_mean = [0.5, 0.5, 0.5]
    assert parts()["image_processor"] != base.parts["image_processor"]
    processor.image_processor.image_mean = AutoProcessor.from_pretrained(backbone_source(cfg.backbone)) \
        .image_processor.image_mean
    processor.image_processor.size = {"shortest_edge": 1, "longest_edge": 2}  # the budget is its own part
    assert parts() == base.parts


def test_verify_checks_the_store_these_settings_train_on(cfg, capsys):
    """Verify on settings whose store does not exist fails and prints the command that builds it."""
    from vla_lib.vlm.cache_build import verify

    cfg.backbone.image_resize_height, cfg.backbone.image_resize_width = 360, 640
    assert verify(cfg) == 2
    out = capsys.readouterr().out
    assert "does not exist" in out and "--mode cache --params" in out
    hint = out.split("Build it with: ")[1].split()[-1]
    assert RunConfig.from_yaml(hint).backbone.image_resize_width == 640  # the printed command has these settings
