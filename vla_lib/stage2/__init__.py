"""Stage 2: LoRA on the VL backbone's language model, trained together with the Stage-1 heads.

- `lora`: peft injection, targets, parameter count, the adapter's tensors;
- `vision_cache`: the frame-level store of the frozen vision tower's merged tokens (Stage 2 runs only the LM);
- `train_stage2`: Stage 1's `Trainer` with the Stage-2 model, loss and checkpoints (the LM with gradients is the
  backbone's, through `vlm.interface.Stage2Backbone`; Qwen2.5-VL's is `vlm.qwen.encode_lm`).

The Stage-2 checkpoint (heads file + peft adapter folder) is saved and loaded by `vla_lib.policy`.
"""
