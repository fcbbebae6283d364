"""The batch-1 action step's helpers (the CUDA graph itself needs a GPU: benchmarks/action_step.py checks it there)."""
import torch

from vla_lib.config import RunConfig
from vla_lib.models.action_graph import with_matmul_weights_in
from vla_lib.models.inputs import example_inputs
from vla_lib.models.modeling_policy import Stage1Policy


def test_bf16_stored_weights_give_the_same_output_as_autocast_over_fp32_weights(monkeypatch):
    # CPU autocast does not turn off nn.MultiheadAttention's native fast path (CUDA autocast does), and that path
    # opens for the bf16 copy only: off here, so both sides take the path the CUDA graph takes.
    monkeypatch.setattr(torch.backends.mha, "get_fastpath_enabled", lambda: False)
    torch.manual_seed(0)
    for fusion in ("concat", "cross_attention"):
        cfg = RunConfig.from_dict({"model": {"preset": "small", "vl_dim": 32, "fusion": fusion}}).model
        heads = Stage1Policy(cfg).eval()
        x = example_inputs(cfg, n_tokens=6, device="cpu", random=True)
        cast = with_matmul_weights_in(heads, torch.bfloat16)
        assert heads.expert.head.weight.dtype == torch.float32  # a copy: `heads` itself keeps fp32 weights
        assert cast.expert.head.weight.dtype == torch.bfloat16 and cast.expert.norm.weight.dtype == torch.float32
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            want, got = heads.predict(x), cast.predict(x)
        assert torch.equal(want, got), fusion
