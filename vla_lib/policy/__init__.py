"""The trained policy as one thing: its checkpoint formats (`checkpoint`: the heads file, with an explicit `stage` and
a versioned format; `adapter`: the Stage-2 LoRA adapter folder beside it), the inference API
(`vla_policy.VLAPolicy`) and a run's checkpoint and policy (`loading`).

    from vla_lib.policy import VLAPolicy, load_checkpoint
    ckpt = load_checkpoint(path)                 # either stage; ckpt.stage says which ("stage1" or "stage2")
    policy = VLAPolicy.from_checkpoint(path)     # heads + backbone (+ the adapter, for Stage 2)
"""
from vla_lib.policy.checkpoint import Checkpoint, checkpoint_stage, load_checkpoint

__all__ = ["Checkpoint", "VLAPolicy", "checkpoint_stage", "load_checkpoint", "load_policy"]


def __getattr__(name):
    # the inference API loads the backbone's modules: imported when asked for, so that training (which needs only
    # the checkpoint format) does not pull them in
    if name == "VLAPolicy":
        from vla_lib.policy.vla_policy import VLAPolicy

        return VLAPolicy
    if name == "load_policy":
        from vla_lib.policy.loading import load_policy

        return load_policy
    raise AttributeError(name)
