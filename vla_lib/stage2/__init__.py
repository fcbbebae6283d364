"""Stage 2: LoRA on the VL backbone's language model, trained together with the Stage-1 heads.

- `lora`: peft injection, targets, parameter count, the adapter's identity, saving and loading;
- `vision_cache`: the frame-level store of the frozen vision tower's merged tokens (Stage 2 runs only the LM);
- `encode_lm`: the language model with gradients, from cached vision tokens or from pixels, per-sample pooling;
- `train_stage2`: the accelerate loop (Stage 1's resume, checkpoints, metrics and wandb names);
- `policy`: the Stage-2 checkpoint (heads + peft adapter folder) for inference and evaluation.
"""
