"""The YAML sections' dataclasses and their checks, kept apart so config.py holds only RunConfig and its loading."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vla_lib.data.cameras import default_camera_views
from vla_lib.data.configuration_sensor_task import SensorTaskConfig
from vla_lib.errors import ConfigError
from vla_lib.data.configuration_robustness import RobustnessConfig


def _choice(where: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{where} must be one of {list(choices)}, got {value!r}")


# ---------------------------------------------------------------------------------------------------------------
# Sections (`model:` is models/configuration_policy.py, `runtime:` runtime/configuration_runtime.py)
# ---------------------------------------------------------------------------------------------------------------
TRAINING_STAGES = ("stage1", "stage2")  # the checkpoint formats name these too (policy/checkpoint.py)


@dataclass
class SyntheticConfig:
    """The synthetic recorder (the embedded default dataset)."""

    out_dir: str = "outputs/demo/sessions"
    num_sensor_sessions: int = 4  # recv_all_* (Family A), split over the two priority groups
    num_nosensor_sessions: int = 2  # Captures* / ZED_Captures_* (Family B)
    num_episode_sessions: int = 0  # New_dataset/episode_* (Family C; scripted scenario only)
    duration_s: float = 20.0
    image_width: int = 1280
    image_height: int = 720
    camera_hz: float = 2.0
    sensor_hz: float = 650.0
    robot_hz: float = 100.0
    seed: int = 0
    scenario: str = "scripted"  # "scripted" (the fixed-timing insertion) or "sensor_task" (reactive, see `task`)
    task: SensorTaskConfig = field(default_factory=SensorTaskConfig)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        _choice("synthetic.scenario", self.scenario, ("scripted", "sensor_task"))
        self.task.validate()
        if self.scenario == "sensor_task" and self.num_episode_sessions:
            raise ConfigError("synthetic.num_episode_sessions (New_dataset episodes) needs synthetic.scenario scripted")


@dataclass
class GroupConfig:
    """A dataset group: a glob of session folders under `data.root`, a sampling weight and an instruction."""

    name: str
    glob: str
    instruction: str
    weight: float = 1.0


def _default_groups() -> list[GroupConfig]:
    return [
        GroupConfig("White_silicone_white_circle", "White_silicone_white_circle/recv_all_*",
                    "Insert into the white square silicone with a white circle sticker attached", 2.0),
        GroupConfig("Needle_insertion_eye_trocar", "Needle_insertion_eye_trocar/recv_all_*",
                    "Insert the needle through the trocar into the eye phantom model", 2.0),
        GroupConfig("OCT_insertion", "OCT_insertion/Captures*", "Perform the insertion task", 1.0),
        GroupConfig("part1", "part1/ZED_Captures_*", "Perform the insertion task", 1.0),
    ]


@dataclass
class DataConfig:
    """Where sessions are and how training samples are cut from them (all times in seconds)."""

    root: str = "outputs/demo/sessions"
    groups: list[GroupConfig] = field(default_factory=_default_groups)
    # Canonical view keys (see data.recorder_formats.VIEW_KEYS); default: the four ZED left views and the OAK view.
    views: list[str] = field(default_factory=lambda: ["View1_left", "View2_left", "View3_left", "View4_left", "View5"])
    sensor_enabled: bool = True
    anchor_stride_s: float = 0.1
    sensor_window_s: float = 0.1
    sensor_window_size: int = 65  # points of the fixed resampling grid (65 = 100 ms at 650 Hz)
    sensor_max_gap_s: float = 0.006  # a grid point farther than this from any raw sample is marked invalid
    horizon: int = 8
    action_dt_s: float = 0.1
    history_steps: int | None = None  # derived: = model.history_steps (the robot's last K pose deltas per sample)
    chunk_past_end: str = "drop"  # "drop" anchors whose chunk runs past the episode, or "pad" (+ target mask)
    # One policy for every step (audit, cache, training, evaluation): decode-check each JPEG when a session is read,
    # so a corrupt frame is skipped (and reported) the same way everywhere and the split never depends on the step.
    check_images: bool = True
    # Clock offsets (seconds added to camera / sensor stamps to reach the robot clock) for sessions without a
    # clock_offsets.json (the rig's own recorder saves none): {session folder name or "*": {camera_s, sensor_s}}.
    clock_offsets: dict = field(default_factory=dict)
    gripper_value: float = 1.0  # 7th action dimension: constant (the interface is 7-D); excluded from loss/metrics
    val_fraction: float = 0.2
    split_seed: int = 42
    val_sessions: list[str] = field(default_factory=list)  # explicit override of the split drawn from split_seed
    max_sessions: int = 0  # 0 = all; for quick looks

    def __post_init__(self) -> None:
        self.validate()

    def derived(self, key: str):
        """A derived field's value (`history_steps`: RunConfig sets it from the model section); refused in one line
        when the section was built alone and never derived."""
        value = getattr(self, key)
        if value is None:
            raise ConfigError(f"data.{key} is derived from the model section and is unset here: build the config "
                              "with RunConfig (e.g. RunConfig.from_dict({'data': {...}}).data), not DataConfig alone")
        return value

    def validate(self) -> None:
        _choice("data.chunk_past_end", self.chunk_past_end, ("drop", "pad"))
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"data.val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.horizon < 1 or self.sensor_window_size < 2 or self.anchor_stride_s <= 0 or self.action_dt_s <= 0:
            raise ConfigError("data: horizon >= 1, sensor_window_size >= 2, anchor_stride_s > 0, action_dt_s > 0")
        for name, offsets in self.clock_offsets.items():
            if not isinstance(offsets, dict) or set(offsets) - {"camera_s", "sensor_s"}:
                raise ConfigError(f"data.clock_offsets[{name!r}] must be a mapping with camera_s and/or sensor_s, "
                                  f"got {offsets!r}")


@dataclass
class BackboneConfig:
    """The frozen VL backbone: a hub id, a local path, or "tiny" (built offline on demand)."""

    kind: str = "qwen2_5_vl"  # a registered kind (vlm.interface.KINDS) or a module path: load(cfg), parts(cfg)
    name_or_path: str = "tiny"
    revision: str | None = None
    random_weights: bool = False  # build the architecture from its config without weights (GPU timing)
    tiny_model_dir: str = "outputs/models/tiny-qwen2.5-vl"
    dtype: str = "auto"  # auto = bf16 on CUDA, fp32 on CPU
    attn_implementation: str = "sdpa"
    # The fast encoder (vlm/fast_vision.py): layout precomputed on the CPU, one variable-length attention per vision
    # layer instead of transformers' loop over windows. auto = on CUDA only; off | varlen | masked_sdpa force a
    # choice. Not part of the cache key: same function. On CUDA it also compiles the blocks (regional torch.compile)
    # and captures one CUDA graph per batch layout, unless these are turned off.
    fast_vision: str = "auto"
    fast_compile: bool = True
    fast_cuda_graphs: bool = True
    # Image preparation (vlm/qwen/gpu_prepare.py): "gpu" decodes JPEGs (nvJPEG), resizes, normalises and lays out the
    # patches on the backbone's device; "cpu" is the reference path (qwen_vl_utils + the image processor); auto = gpu
    # on CUDA. Pixel values differ slightly between the two (resize arithmetic, JPEG decoder), so "gpu" is part of
    # the cache fingerprint: a store is never filled by both.
    image_prep: str = "auto"
    # torch.compile's caches (Inductor, Triton, autotuning) persist here, so a second process on the same machine
    # skips most of the fast encoder's one-off compilation; "" = torch's defaults.
    compile_cache_dir: str = "outputs/compile_cache"
    device: str = "auto"
    image_resize_height: int = 360
    image_resize_width: int = 640  # pixel budget = height * width (min = max: every image gets exactly it)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        _choice("backbone.dtype", self.dtype, ("auto", "bf16", "bfloat16", "fp16", "float16", "fp32", "float32"))
        _choice("backbone.fast_vision", self.fast_vision, ("auto", "off", "varlen", "masked_sdpa"))
        _choice("backbone.image_prep", self.image_prep, ("auto", "cpu", "gpu"))
        if self.image_resize_height <= 0 or self.image_resize_width <= 0:
            raise ConfigError("backbone.image_resize_height/width must be positive")


@dataclass
class CacheConfig:
    """The VL feature store."""

    # "" = <output_root>/vl_cache, shared by the runs: stores are content-addressed by fingerprint, so runs with other
    # settings never mix, and runs with the same ones share the work. Each run links the store it used
    # (<run_dir>/vl_cache).
    dir: str = ""
    pooling: str = "per_view"  # "per_view": V view tokens + 1 instruction token; "mean_all": 1 mean token
    batch_size: int = 4
    num_workers: int = 0
    shard_size: int = 256  # samples per shard file (and per flush: a killed build loses at most this many)
    allow_inline_encoding: bool = False  # training on a cache miss: error (default) or encode inline
    # With backbone.image_prep = gpu: false = the workers read the JPEG bytes and the device decodes them (nvJPEG);
    # true = the workers decode them (libjpeg, PIL's pixels exactly) and the device only resizes and normalises.
    worker_decode: bool = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        _choice("cache.pooling", self.pooling, ("per_view", "mean_all"))


@dataclass
class TrainConfig:
    output_dir: str = ""  # "" = <output_root>/<run_name>/train: one run, one folder
    epochs: int = 100
    batch_size: int = 1
    grad_accum_steps: int = 8
    lr: float = 1e-4
    sensor_lr: float = 5e-4
    min_lr: float = 1e-6
    warmup_ratio: float = 0.03
    hold_ratio: float = 0.02
    weight_decay: float = 0.01
    clip_grad_norm: float = 1.0
    sensor_loss_weight: float = 2.0
    nonsensor_confidence: float = 0.5  # samples without sensor count less (they carry less information about contact)
    seed: int = 42
    num_workers: int = 0
    save_every_steps: int = 0  # 0 = only at epoch ends
    log_every_steps: int = 1  # step metrics (tqdm, JSONL, wandb) every N optimiser steps; each costs a host sync
    max_steps: int = 0  # 0 = no limit (used by tests to stop early)
    mixed_precision: str = "auto"  # auto = bf16 autocast on CUDA, none on CPU
    compile: bool = False  # torch.compile the heads in place (nn.Module.compile: state-dict keys unchanged)
    # reduce-overhead = CUDA graphs for forward and backward: the batch-64 step is launch-bound, not FLOP-bound
    compile_mode: str = "reduce-overhead"
    wandb_mode: str = "offline"  # offline | online | disabled
    wandb_project: str = "vla-stage1"
    finetune_vl: str = "none"  # none (Stage 1: the backbone frozen, features cached) | lora (Stage 2)
    training_stage: str = "stage1"  # stage1 | stage2 (LoRA on the VL backbone + the heads, see the lora section)
    stage1_checkpoint: str = ""  # Stage 2: the Stage-1 heads to start from (their stats, split and features)
    vl_lr: float = 1e-5  # Stage 2: learning rate of the LoRA parameters (heads: lr, sensor: sensor_lr)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        _choice("train.compile_mode", self.compile_mode,
                ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"))
        _choice("train.mixed_precision", self.mixed_precision, ("auto", "no", "bf16", "fp16"))
        _choice("train.wandb_mode", self.wandb_mode, ("offline", "online", "disabled"))
        if self.epochs < 1 or self.batch_size < 1 or self.grad_accum_steps < 1 or self.log_every_steps < 1:
            raise ConfigError("train: epochs, batch_size, grad_accum_steps and log_every_steps must be >= 1")
        _choice("train.finetune_vl", self.finetune_vl, ("none", "lora"))
        _choice("train.training_stage", self.training_stage, TRAINING_STAGES)
        if (self.finetune_vl == "lora") != (self.training_stage == "stage2"):
            raise ConfigError("train.finetune_vl and train.training_stage go together: none with stage1 (heads on "
                              "cached features), lora with stage2 (LoRA on the backbone + heads); got "
                              f"{self.finetune_vl!r} with {self.training_stage!r}")
        if self.vl_lr < 0:
            raise ConfigError(f"train.vl_lr must be >= 0, got {self.vl_lr}")


@dataclass
class LoraConfig:
    """Stage 2: LoRA on the VL backbone (peft). Defaults: r 16, alpha 32, dropout 0.05 on the language model's
    q/k/v/o projections (7,372,800 parameters on the 3B model; the vision blocks name their projections qkv/proj,
    so these targets leave the vision tower frozen)."""

    targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    # Frame-level vision cache: the frozen vision tower's merged tokens per frame, so Stage 2 runs only the language
    # model. auto = on when the targets leave the vision tower untouched; on = required (refused when they do not).
    vision_cache: str = "auto"
    gradient_checkpointing: bool = True  # recompute each LM layer in the backward pass (memory for batch size)
    # The LM's decoder layers through one torch.compile'd call (auto = on CUDA): 1.5-1.9x the step rate on an H100,
    # 1.3x through the training loop (docs/results.md, "Stage-2 speed"); the first steps include the compilation.
    compile_layers: str = "auto"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        _choice("lora.vision_cache", self.vision_cache, ("auto", "on", "off"))
        _choice("lora.compile_layers", self.compile_layers, ("auto", "on", "off"))
        if self.r < 1 or self.alpha <= 0 or not 0 <= self.dropout < 1 or not self.targets:
            raise ConfigError("lora: r >= 1, alpha > 0, 0 <= dropout < 1 and at least one target module")


@dataclass
class EvalConfig:
    checkpoint: str = ""  # default: <train.output_dir>/checkpoints/qwen_vla_sensor_best.pt
    # Held-out sessions: [] = exactly the validation sessions recorded in the checkpoint; a list evaluates those
    # instead (refused if any was a training session of the checkpoint).
    sessions: list[str] = field(default_factory=list)
    # Refuse heads trained on features of another backbone / pixel budget / dtype unless this is set.
    allow_backbone_mismatch: bool = False
    realtime_duration_s: float = 10.0
    realtime_vl_rate_hz: float = 0.0  # 0 = as fast as it can (the replay ticks once per data.action_dt_s)
    latency_views: list[int] = field(default_factory=lambda: [1, 2, 3, 5])
    latency_resolutions: list[list[int]] = field(
        default_factory=lambda: [[1280, 720], [960, 540], [640, 360], [480, 270]])
    latency_repeats: int = 5
    latency_warmup: int = 2


@dataclass
class LiveConfig:
    """The live rig (`--mode live`): endpoints, streams, buffers. Dry run unless `send_actions` (`--send-actions`);
    execution, limits and fault responses are the `runtime:` section (the same for every loop).

    Endpoints are ZMQ addresses (robot: SUB connects to the robot PC's PUB; cameras: PULL binds, the senders PUSH to
    it; actions: PUB binds) and a UDP host:port the sensor receiver binds. The defaults are loopback with the
    rig's ports; point them at your rig in the params file."""

    robot_endpoint: str = "tcp://127.0.0.1:5556"
    camera_endpoint: str = "tcp://127.0.0.1:5555"
    sensor_endpoint: str = "127.0.0.1:9999"
    action_endpoint: str = "tcp://127.0.0.1:5557"
    send_actions: bool = False  # publish the actions; otherwise log what would be sent (dry run)
    simulate_senders: bool = False  # start senders that replay a recorded session over loopback
    replay_session: str = ""  # their session folder (any layout); "" = the first held-out session with sensor
    replay_loop: bool = True  # replay again (stamps shifted on) when the session ends
    replay_cameras: list[str] = field(default_factory=list)  # view keys the senders send; [] = every camera
    sim_sensor_batch_s: float = 0.005  # the simulated sensor sends what is due every this many seconds
    sim_sensor_drop_fraction: float = 0.0  # packets the simulated sensor drops on purpose
    instruction: str = ""  # "" = the replayed session's group instruction, else the first group's
    duration_s: float = 20.0  # the loop ticks once per data.action_dt_s (runtime/loop.py)
    vl_rate_hz: float = 2.0  # VL refreshes per second (0 = as fast as it can)
    torch_threads: int = 1  # leave CPU to the receivers
    ready_timeout_s: float = 15.0  # wait this long for every stream before the loop starts
    require_sensor: bool = True  # no sensor data = hold (safety) and a stream the loop waits for
    camera_views: dict[str, str] = field(default_factory=default_camera_views)  # camera name -> view key
    clock_window_s: float = 10.0  # sliding window of the running-minimum clock offset estimate
    robot_buffer_s: float = 10.0
    sensor_buffer_s: float = 2.0
    record: bool = False  # write what is received as a recv_all session under outputs/<run>/live/
    # execution, limits and fault responses: the `runtime:` section (one for every loop)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        positive = ("duration_s", "ready_timeout_s", "clock_window_s", "robot_buffer_s", "sensor_buffer_s",
                    "sim_sensor_batch_s")
        bad = [f"live.{k} ({getattr(self, k)!r})" for k in positive if not getattr(self, k) > 0]
        if bad or not 0 <= self.sim_sensor_drop_fraction < 1 or self.vl_rate_hz < 0:
            raise ConfigError(f"live: must be > 0: {', '.join(bad) or '-'}; sim_sensor_drop_fraction in [0, 1); "
                              "vl_rate_hz >= 0")


PREDICTORS = ("policy", "policy_no_sensor", "scripted", "demonstrator")  # evaluation/closed_loop.py runs them
WEIGHTLESS = ("scripted", "demonstrator")  # no trained weights: on the same episodes, the same results in every run


@dataclass
class ClosedLoopConfig:
    """Closed-loop evaluation on the simulated rig (vla_lib/evaluation/closed_loop.py), on held-out episodes drawn
    from `seed` (never a training seed: the recorder's episodes come from synthetic.seed)."""

    episodes: int = 20
    seed: int = 1000
    predictors: list[str] = field(default_factory=lambda: ["policy", "policy_no_sensor", "scripted"])
    plot_episodes: int = 3
    # torch intra-op threads during the loop (0 = leave as is): a batch-1 loop gains nothing from more, and on a busy
    # CPU extra threads spin against each other (one act() measured 50 ms on 1 thread, 550-880 ms on 2, load 8)
    torch_threads: int = 1
    guard_off_too: bool = False  # run every predictor again with runtime.guard off: its peak force beside
    robustness: RobustnessConfig = field(default_factory=RobustnessConfig)  # the matrix over perturbation families

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        for name in self.predictors:
            _choice("closed_loop.predictors[]", name, PREDICTORS)
        if self.episodes < 1:
            raise ConfigError(f"closed_loop.episodes must be >= 1, got {self.episodes}")
        self.robustness.validate()


@dataclass
class SweepConfig:
    """A grid of runs (vla_lib/sweep/): every combination of `grid` values (dotted config keys) becomes a params
    file and one papermill run of notebooks/sweep_member.ipynb; finished runs are skipped on a rerun."""

    name: str = "sweep"
    grid: dict[str, list] = field(default_factory=dict)  # e.g. {"data.sensor_enabled": [true, false], "train.seed": [0, 1, 2]}
    overrides: dict[str, Any] = field(default_factory=dict)  # dotted keys applied to every member (e.g. train.epochs)
    torch_threads: int = 1  # per member (0 = torch's default); one member at a time, small heads: 1 is fastest on a busy CPU
