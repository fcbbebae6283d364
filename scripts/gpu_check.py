"""The GPU acceptance check: does this install run the workbench's commands on the 3B model without a crash or a NaN?

    python scripts/gpu_check.py            # one GPU, ~10 minutes; exit code 0 only if every step passed

It writes small synthetic sessions of every recorder layout (sensor and no-sensor, `params/gpu_check.yaml`: stage1.yaml
as shipped, with random 3B weights), then runs the README's commands as a user types them, each in its own process:
cache, verify, Stage-1 training compiled (as shipped) and eager, offline evaluation, closed loop, one Stage-2 epoch,
and the README's inference snippet; and, in a process of its own beside those, the heads compiled (both modes, and
fp32) against eager on the same weights and batch at every step. It checks finite and decreasing losses, compiled = eager, the checkpoints and the metrics, and prints one
summary line per step (wall time, throughput, peak GPU memory). `--cpu` runs the same steps on the CPU with the tiny
model (a check of this script, not of a GPU install).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PARAMS = "params/gpu_check.yaml"
RUN = "outputs/gpu_check"
CKPT = f"{RUN}/train/checkpoints/qwen_vla_sensor_best.pt"
# The README's commands (README "Train on your own recordings"), with this check's params file and run names.
COMMANDS = {
    "synth": f"python -m vla_lib --mode synth --params {PARAMS}",
    "cache": f"accelerate launch -m vla_lib --mode cache --params {PARAMS}",
    "verify": f"python -m vla_lib --mode verify --params {RUN}/params.yaml",
    "train_compiled": f"accelerate launch -m vla_lib --mode train --params {RUN}/params.yaml",
    "train_eager": f"accelerate launch -m vla_lib --mode train --params {RUN}/params.yaml --run-name gpu_check_eager "
                   "--set train.compile=false",
    "eval": f"python -m vla_lib --mode eval --params {RUN}/params.yaml",
    "closed_loop": f"python -m vla_lib --mode closed_loop --params {RUN}/params.yaml",
    # the heads compiled against eager (this script in a process of its own; its result: a JSON beside the logs)
    "heads_equivalence": f"python benchmarks/heads_equivalence.py --params {PARAMS} --json {RUN}_logs/heads_equivalence.json",
    "stage2": f"accelerate launch -m vla_lib --mode train --params {RUN}/params.yaml --run-name gpu_check_stage2 "
              f"--training-stage stage2 --finetune-vl lora --stage1-checkpoint {CKPT} --epochs 1 --batch-size 8 "
              "--grad-accum-steps 1 --vl-lr 1e-5 --set train.compile=false",
}
# The tiny model on the CPU: the same steps, smaller, to check this script where there is no GPU.
CPU_SETTINGS = ["--set", "backbone.random_weights=false", "--set", "backbone.name_or_path=tiny",
                "--image-resize-height", "168", "--image-resize-width", "308", "--set", "train.compile=false",
                "--set", "model.preset=small", "--batch-size", "8", "--grad-accum-steps", "1"]
LAYOUTS = ("recv_all_", "Captures", "ZED_Captures_", "episode_")


class CheckFailed(RuntimeError):
    pass


def expect(ok: bool, what: str) -> None:
    if not ok:
        raise CheckFailed(what)


class PeakMemory:
    """The GPU's peak memory in use while a step runs (nvidia-smi every 0.25 s: the steps are other processes)."""

    def __init__(self):
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True) if shutil.which("nvidia-smi") else None

    def _poll(self):
        while not self._stop.wait(0.25):
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=5).stdout
                self.peak = max(self.peak, max(int(v) for v in out.split()))
            except (subprocess.SubprocessError, ValueError):
                pass

    def __enter__(self):
        if self._thread:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread:
            self._thread.join()

    def text(self) -> str:
        return f"{self.peak / 1024:.1f} GiB" if self._thread else "n/a"


class Check:
    def __init__(self, cpu: bool, log_dir: Path):
        self.cpu, self.log_dir = cpu, log_dir
        self.rows: list[str] = []
        self.failed: list[str] = []
        self.running: dict[str, tuple] = {}  # commands started beside the step in progress
        self.walls: dict[str, float] = {}  # each command's own wall time (from its start, beside or not)
        self.peaks: dict[str, PeakMemory] = {}  # ... and the GPU's peak memory over it (what ran beside included)

    def start(self, name: str, extra: list[str] | None = None) -> None:
        """Start one of COMMANDS in its own process, its output to <log_dir>/<name>.log; `command(name)` waits."""
        argv = COMMANDS[name].split()
        argv = ([sys.executable] + argv[1:] if argv[0] == "python" else
                [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1"] + argv[2:]) \
            if self.cpu or argv[0] == "python" else argv
        if self.cpu and name not in ("synth", "heads_equivalence"):  # those two take no vla_lib settings
            argv += CPU_SETTINGS
        argv += extra or []
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled",
               # a benchmarks/ script imports vla_lib from this checkout even where it is not pip-installed
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        log = open(self.log_dir / f"{name}.log", "w")
        log.write(f"$ {' '.join(argv)}\n")
        log.flush()
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        # GPU-wide peak from this command's start (a command started beside others ends before its row is due)
        self.running[name] = (proc, log, time.time(), PeakMemory().__enter__())

    def command(self, name: str, extra: list[str] | None = None) -> str:
        """Run one of COMMANDS (or wait for it, when it was started beside an earlier step). Returns its output."""
        if name not in self.running:
            self.start(name, extra)
        proc, log, started, mem = self.running.pop(name)
        code = proc.wait()
        mem.__exit__()
        log.close()
        self.walls[name] = time.time() - started
        self.peaks[name] = mem
        out = (self.log_dir / f"{name}.log").read_text()
        errors = [line for line in out.splitlines() if line.startswith(("error:", "Traceback", "RuntimeError"))]
        expect(code == 0, f"exit code {code}: {(errors or out.splitlines()[-1:] or [''])[0]}"
               f" (log: {self.log_dir / (name + '.log')})")
        return out

    def step(self, name: str, fn) -> None:
        start = time.time()
        with PeakMemory() as mem:
            try:
                detail = fn() or ""
                status = "ok"
            except Exception as e:  # a failed step is reported and the others still run where they can
                detail, status = f"{type(e).__name__}: {e}", "FAILED"
                self.failed.append(name)
        wall = self.walls.get(name, time.time() - start)
        peak = max((mem, self.peaks.get(name, mem)), key=lambda m: m.peak).text()
        row = f"[gpu_check] {status:6s} {name:18s} {wall:7.1f} s  peak {peak:>9s}  {detail}"
        self.rows.append(row)
        print(row, flush=True)
        with open(self.log_dir / "summary.txt", "a") as f:  # step by step: a run cut short keeps what it measured
            f.write(row + "\n")


# -- the steps -------------------------------------------------------------------------------------------------------
def synth(check: Check) -> str:
    out = Path(RUN) / "sessions"
    if out.exists():
        shutil.rmtree(out)
    check.command("synth")
    found = {layout: len(list(out.glob(f"*/{layout}*"))) for layout in LAYOUTS}
    expect(all(found.values()), f"a recorder layout is missing: {found}")
    from vla_lib.config import RunConfig
    from vla_lib.data.samples import build_index

    index = build_index(RunConfig.from_yaml(PARAMS).data, verbose=False)
    paths = [index.view_paths(i) for i in range(len(index))]
    blind = sum(all(p is None for p in ps) for ps in paths)
    sensor = int(index.table.has_sensor.sum())
    expect(0 < sensor < len(index), "the sessions need samples with and without sensor")
    expect(blind > 0, "the sessions need samples with every view missing (text-only inputs to the encoder)")
    return (f"{sum(found.values())} sessions {found}; {len(index)} samples ({sensor} with sensor, {blind} with every "
            "view missing)")


def cache(check: Check) -> str:
    out = check.command("cache")
    done = re.search(r"Cache build complete: (\d+) entries, (\d+) encoded in ([\d.]+) s.*?after the first batch "
                     r"([\d.]+)/s per process", out, re.S)
    expect(done is not None, "no 'Cache build complete' line")
    expect(int(done.group(2)) > 0, "nothing was encoded (the check's store was not fresh)")
    warm = re.search(r"one-off compile and capture: ([\d.]+) s", out)
    rate = float(done.group(4))
    return (f"{done.group(1)} entries; {1e3 / rate if rate else float('nan'):.1f} ms/sample after the first batch; "
            f"warm-up {warm.group(1) if warm else '0'} s")


def verify(check: Check) -> str:
    out = check.command("verify")
    return out.strip().splitlines()[-1]


def _train_rows(run: str) -> tuple[list[dict], list[dict]]:
    rows = [json.loads(line) for line in (Path(run) / "train" / "metrics.jsonl").read_text().splitlines() if line]
    return [r for r in rows if "train/loss_step" in r], [r for r in rows if "train/loss_epoch" in r]


def _check_run(run: str, epochs: int, stage2: bool = False) -> tuple[list[dict], list[dict]]:
    steps, epoch_rows = _train_rows(run)
    expect(len(epoch_rows) == epochs, f"{run}: {len(epoch_rows)} epochs logged, not {epochs}")
    values = [r["train/loss_step"] for r in steps] + [r["train/grad_norm"] for r in steps] + \
        [v for r in epoch_rows for v in (r["train/loss_epoch"], r["val/loss_epoch"])]
    expect(all(math.isfinite(v) for v in values), f"{run}: a non-finite loss or gradient norm was logged")
    losses = [r["train/loss_step"] for r in steps]
    k = max(1, len(losses) // 5)
    first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
    expect(last < first, f"{run}: the training loss did not decrease (first fifth {first:.4f}, last {last:.4f})")
    ckpts = Path(run) / "train" / "checkpoints"
    from vla_lib.policy.checkpoint import CHECKPOINT_NAMES

    for name in CHECKPOINT_NAMES.values():
        expect((ckpts / name).exists(), f"{run}: {name} missing")
    if stage2:
        expect(any(ckpts.glob("qwen_vla_sensor_best.adapter-*")), f"{run}: no adapter folder")
    else:
        import torch

        state = torch.load(ckpts / CHECKPOINT_NAMES["final"], map_location="cpu", weights_only=True)
        weights = state["model_state_dict"]
        expect(all(torch.isfinite(v).all() for v in weights.values() if torch.is_tensor(v) and v.is_floating_point()),
               f"{run}: the final checkpoint holds non-finite weights")
    return steps, epoch_rows


def _train_line(steps, epoch_rows) -> str:
    losses = [r["train/loss_step"] for r in steps]
    rates = ", ".join(f"{r['train/samples_per_s']:.0f}" for r in epoch_rows)
    return (f"loss {losses[0]:.4f} -> {losses[-1]:.4f} over {len(losses)} steps; epoch train/val "
            + "; ".join(f"{r['train/loss_epoch']:.4f}/{r['val/loss_epoch']:.4f}" for r in epoch_rows)
            + f"; samples/s per epoch {rates}")


def train_compiled(check: Check) -> str:
    check.command("train_compiled")
    return _train_line(*_check_run(RUN, 2))


def train_eager(check: Check) -> str:
    check.command("train_eager")
    steps, epoch_rows = _check_run("outputs/gpu_check_eager", 2)
    compiled, compiled_epochs = _train_rows(RUN)
    # same data order and initial weights; dropout (on as shipped) draws differently compiled and eager, so the
    # epoch means agree statistically, not bit for bit: the heads_equivalence step compares step by step
    rel = [abs(a["train/loss_epoch"] - b["train/loss_epoch"]) / abs(b["train/loss_epoch"])
           for a, b in zip(compiled_epochs, epoch_rows)]
    expect(max(rel) < 0.15, f"compiled and eager epoch losses differ by {max(rel):.1%}")
    return _train_line(steps, epoch_rows) + f"; compiled vs eager epoch loss {max(rel):.2%} apart"


# Compiled vs eager on the same weights, per step (`compare_compiled_to_eager`): fp32 shows the same function up to
# reduction order; bf16 autocast adds rounding where Inductor fuses ops (it keeps fp32 inside a fused kernel)
STEP_LIMITS = {"fp32": (1e-4, 1e-3), "bf16": (3e-3, 5e-2)}  # (loss, gradient norm), relative, at every step
GRAPH_LIMIT = 1e-3  # the action step's CUDA graph against eager on the same bf16 weights (it replays the same kernels)


def heads_equivalence(check: Check) -> str:
    """Every step of the compiled runs (stage1.yaml's heads, and with the contact memory) within STEP_LIMITS of eager
    on the same weights and batch, all finite (the child raises otherwise), and the CUDA-graphed action step within
    GRAPH_LIMIT of eager. The free-running trajectories' end points are reported, not judged (chaos: see
    `benchmarks/heads_equivalence.py`)."""
    check.command("heads_equivalence")  # started beside the others after synth (or now, with --only)
    done = json.loads((check.log_dir / "heads_equivalence.json").read_text())
    res, cuda = done["result"], done["cuda"]
    floor, graph = res.pop("bf16_noise_floor"), done["action_graph_rel"]
    for mode, r in res.items():
        kind = "fp32" if mode.endswith("/fp32") or not cuda else "bf16"  # on the CPU the "bf16" runs are fp32 too
        loss_limit, grad_limit = STEP_LIMITS[kind]
        expect(r["step_loss_rel_max"] <= loss_limit and r["step_grad_rel_max"] <= grad_limit,
               f"{mode}: compiled differs from eager on the same weights by {r['step_loss_rel_max']:.1e} (loss) and "
               f"{r['step_grad_rel_max']:.1e} (gradient norm) relative at worst (limits {loss_limit:.0e}, "
               f"{grad_limit:.0e}): not the same function: {res}")
    for heads, rel in graph.items():
        expect(rel is None or rel <= GRAPH_LIMIT, f"the {heads} action step's CUDA graph differs from eager by {rel}")
    return (f"{done['wall_s']:.0f} s beside the other steps; per step vs eager on the same weights (loss, grad): "
            + "; ".join(f"{m} {r['step_loss_rel_max']:.0e}, {r['step_grad_rel_max']:.0e}" for m, r in res.items())
            + "; free-running last-step loss vs eager: "
            + ", ".join(f"{m} {r['rel_diff_last']:.1e}" for m, r in res.items())
            + f" (bf16 vs fp32 eager {floor:.1e}); action graph vs eager "
            + ", ".join(f"{k} {'n/a' if v is None else f'{v:.0e}'}" for k, v in graph.items()))


def evaluate(check: Check) -> str:
    check.command("eval")
    metrics = json.loads((Path(RUN) / "metrics.json").read_text())
    expect("offline" in metrics and "realtime" in metrics, f"metrics.json lacks offline/realtime: {sorted(metrics)}")
    mse = metrics["offline"]["policy"]["mse"] if "policy" in metrics["offline"] else metrics["offline"]
    return f"metrics.json {sorted(metrics)}; offline policy {json.dumps(mse)[:80]}"


def closed_loop(check: Check) -> str:
    check.command("closed_loop")
    cl = json.loads((Path(RUN) / "metrics.json").read_text())["closed_loop"]
    return json.dumps(cl)[:160]


def stage2(check: Check) -> str:
    check.command("stage2")
    return _train_line(*_check_run("outputs/gpu_check_stage2", 1, stage2=True))


def inference_snippet(check: Check) -> str:
    """The README's snippet, with this check's checkpoint and params file."""
    snippet = f"""
from vla_lib.policy import VLAPolicy
from vla_lib.data.samples import build_index, SampleDataset
from vla_lib.data.timeline import SensorWindow
from vla_lib.config import RunConfig

policy = VLAPolicy.from_checkpoint("{CKPT}")  # heads, stats, config
cfg = RunConfig.from_yaml("{RUN}/params.yaml")
index = build_index(cfg.data); i = 100
sample = SampleDataset(index, cfg.data)[i]
window = SensorWindow(sample["sensor"], sample["sensor_mask"])          # (65, 1026) values, (65,) which are samples
chunk = policy.predict(index.table.instruction[i], index.view_paths(i),   # 5 views: paths, PIL images or arrays
                       window, index.history[i],                          # (K, 6): the robot's last pose deltas
                       sample["contact"])                                 # (4,): the contact memory at t
print(chunk.shape, chunk[0])                                              # (8, 7): mm, deg, gripper
import numpy as np; assert chunk.shape == (8, 7) and np.isfinite(chunk).all(), chunk
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", snippet], cwd=ROOT, env=env, capture_output=True, text=True)
    (check.log_dir / "inference.log").write_text(proc.stdout + proc.stderr)
    expect(proc.returncode == 0, f"exit code {proc.returncode}: {(proc.stderr.strip().splitlines() or [''])[-1]}")
    return proc.stdout.strip().splitlines()[0]


STEPS = [("synth", synth), ("cache", cache), ("verify", verify), ("train_compiled", train_compiled),
         ("train_eager", train_eager), ("eval", evaluate), ("closed_loop", closed_loop),
         ("heads_equivalence", heads_equivalence), ("stage2", stage2), ("inference", inference_snippet)]
# Started beside the steps that follow the key (run order stays STEPS'; their rows give their own wall time, and
# their peaks include what ran with them)
BESIDE_AFTER = {"synth": ("heads_equivalence",), "cache": ("train_eager",),
                "train_compiled": ("closed_loop", "stage2")}
NEEDS = {"cache": "synth", "heads_equivalence": "synth", "verify": "cache", "train_compiled": "cache",
         "train_eager": "cache", "eval": "train_compiled", "closed_loop": "train_compiled", "stage2": "train_compiled",
         "inference": "train_compiled"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu", action="store_true", help="the tiny model on the CPU (checks this script only)")
    ap.add_argument("--only", nargs="*", help="run only these steps (their inputs must exist): "
                    + " ".join(n for n, _ in STEPS))
    args = ap.parse_args()
    os.chdir(ROOT)
    sys.path.insert(0, str(ROOT))
    import torch

    if not args.cpu and not torch.cuda.is_available():
        print("[gpu_check] no CUDA device: this check is for a GPU install (--cpu checks the script on the CPU)")
        return 2
    if not args.only:  # a fresh check: nothing of an earlier one is reused
        for run in (RUN, "outputs/gpu_check_eager", "outputs/gpu_check_stage2"):
            shutil.rmtree(run, ignore_errors=True)
    log_dir = Path(RUN + "_logs")
    log_dir.mkdir(parents=True, exist_ok=True)
    (log_dir / "summary.txt").unlink(missing_ok=True)
    import transformers

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(f"[gpu_check] {device}; torch {torch.__version__}, transformers {transformers.__version__}; "
          f"{'tiny model on the CPU' if args.cpu else 'Qwen2.5-VL-3B architecture, random weights'}; logs {log_dir}",
          flush=True)
    check = Check(args.cpu, log_dir)
    start = time.time()
    for name, fn in STEPS:
        if args.only and name not in args.only:
            continue
        if NEEDS.get(name) in check.failed:
            check.rows.append(f"[gpu_check] SKIP   {name:18s} (needs {NEEDS[name]}, which failed)")
            check.failed.append(name)
            print(check.rows[-1], flush=True)
            continue
        check.step(name, lambda fn=fn: fn(check))
        # what needs only this step's outputs starts now, beside the next steps (the GPU has room; together the
        # steps then fit 10 minutes)
        for later in BESIDE_AFTER.get(name, ()) if name not in check.failed else ():
            if not args.only or later in args.only:
                check.start(later)
    total = time.time() - start
    verdict = "PASSED" if not check.failed else f"FAILED ({', '.join(check.failed)})"
    print(f"[gpu_check] {verdict} in {total:.0f} s", flush=True)
    with open(log_dir / "summary.txt", "a") as f:
        f.write(f"[gpu_check] {verdict} in {total:.0f} s\n")
    return 0 if not check.failed else 1


if __name__ == "__main__":
    sys.exit(main())
