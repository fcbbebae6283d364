"""The action step (SensorEncoder + Action Expert at batch 1) captured as a CUDA graph for the real-time loop.

Eager, the step is launch-bound (~4 ms fp32, ~8 ms under bf16 autocast for ~120 M parameters at batch 1); replaying
one captured graph removes the per-kernel launch cost, and weights stored in bf16 spare autocast its per-call
casts (1.23 ms measured with fp32 weights). Inputs are copied into static buffers,
the graph replayed, the output cloned. CUDA only; `ActionStep` picks eager elsewhere.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from vla_lib.models.inputs import PolicyInputs, example_inputs

def with_matmul_weights_in(heads: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A copy of `heads` whose linear, convolution and attention-projection weights are stored in `dtype`.

    At batch 1 the step is bound by reading weights, and autocast re-casts every fp32 weight on every call (read
    4 bytes, write 2, read 2 per parameter). Stored in `dtype` the cast is a no-op; under the same autocast the
    outputs are bit-identical. Norms, embeddings and the normalisation buffers stay fp32, as autocast keeps them.
    """
    heads = copy.deepcopy(heads)
    for module in heads.modules():
        if isinstance(module, (nn.Linear, nn.Conv1d)):
            names = ("weight", "bias")
        elif isinstance(module, nn.MultiheadAttention):
            names = ("in_proj_weight", "in_proj_bias")
        else:
            continue
        for name in names:
            p = getattr(module, name, None)
            if p is not None:
                p.data = p.data.to(dtype)
    return heads


class ActionStep:
    """Callable PolicyInputs (batch 1) -> physical chunk, eager or graphed."""

    def __init__(self, heads, n_tokens: int, use_graph: bool | None = None, dtype: torch.dtype = torch.bfloat16,
                 like: PolicyInputs | None = None):
        """`like`: inputs whose shapes the graph serves (the sensor window has `data.sensor_window_size` points,
        which may differ from the model's `sensor_length`: the encoder resamples); default: the model's shapes."""
        self.heads = heads.eval()
        device = next(heads.parameters()).device
        self.graphed = (device.type == "cuda") if use_graph is None else use_graph
        if not self.graphed:
            return
        self.dtype = dtype
        self.heads = with_matmul_weights_in(self.heads, dtype)  # a snapshot: the graph serves these weights
        self.static = example_inputs(heads.config, n_tokens, device) if like is None else \
            PolicyInputs(**{k: v.detach().clone() for k, v in like.tensors().items()})
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), torch.no_grad():
            for _ in range(3):  # warm-up outside the graph (allocator, cuBLAS handles)
                self._run()
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: a VL thread launching its own work meanwhile (a re-capture mid-run) does not void the capture
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"), torch.no_grad():
            self.output = self._run()

    def _run(self) -> torch.Tensor:
        # the sensor mask is a tensor in the graph: the null-embedding choice is a torch.where, captured for both cases
        with torch.autocast("cuda", dtype=self.dtype):
            return self.heads.predict(self.static)

    def fits(self, x: PolicyInputs) -> bool:
        """Whether `x` has the shapes the graph was captured for."""
        if not self.graphed:
            return True
        static = self.static.tensors()
        return x.tensors().keys() == static.keys() and all(t.shape == static[k].shape for k, t in x.tensors().items())

    @torch.no_grad()
    def __call__(self, x: PolicyInputs) -> torch.Tensor:
        if not self.graphed:
            return self.heads.predict(x)
        for name, value in x.tensors().items():
            self.static.tensors()[name].copy_(value)
        self.graph.replay()
        return self.output.clone()
