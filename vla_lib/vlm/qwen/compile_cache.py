"""Persisting torch.compile's caches, so that a second process on the same machine starts in seconds.

What can persist: Inductor's FX graph cache (the generated code), AOTAutograd's cache, the compiled Triton kernels and
autotuning results: all live under Inductor's cache directory, which `use_compile_cache` points at a configured folder
(`backbone.compile_cache_dir`, default `outputs/compile_cache/`) unless `TORCHINDUCTOR_CACHE_DIR` is set already.
What cannot: Dynamo's tracing of the Python code (redone in every process, a few seconds) and the CUDA graphs
(device pointers of one process): the fast encoder re-captures one per layout, which takes well under a second each.
`torch.compiler.save_cache_artifacts` (the "mega-cache") would pack the same artifacts into one file to carry to
another machine; on one machine the cache folder is the same thing, so it is not used here.
"""
from __future__ import annotations

import os
from pathlib import Path

ENV = "TORCHINDUCTOR_CACHE_DIR"


def use_compile_cache(directory: str | os.PathLike | None) -> str | None:
    """Point Inductor's caches at `directory` (created; made absolute, so a later chdir does not split it), unless
    the user's environment names one. Returns the directory in use, or None for torch's default. (Torch writes its
    default folder into the same variable the first time it looks, at import of some modules: that one is replaced.)"""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    current = os.environ.get(ENV)
    if current and os.path.abspath(current) != os.path.abspath(default_cache_dir()):
        return current
    if not directory:
        return None
    path = Path(directory).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    os.environ[ENV] = str(path)  # read by Inductor at each cache access, and by Triton's cache below it
    return str(path)
