"""CUDA-graph replay of a stage: capture its kernels once per input shape, then launch them all at once.

Eager PyTorch pays CPU time for every kernel launch. The UNet issues over a thousand small kernels per
step, and on a fast GPU their launches take longer than their work: the GPU waits on Python (counts and
timings: scripts/BENCHMARKS.md). A CUDA graph records the launches once and replays them with one call.

`CUDAGraphed(fn)` wraps a function of tensors (and plain Python values, which become part of the cache
key and are baked into the capture). On the first call for a given signature of shapes, dtypes and
Python values it warms `fn` up on a side stream, captures it into static input and output buffers, and
on every call copies the inputs in, replays, and returns copies of the outputs. The function must not
synchronise with the host (no `.item()`, no data-dependent shapes): every stage of this package is
written that way. If a capture fails anyway, the wrapper warns once and runs `fn` eagerly from then on.
Calls without CUDA tensors run `fn` directly, so a wrapped function still works on the CPU.

The pipeline keeps its wrapped stages to itself (`AudioLDM2Pipeline.optimize`, `Runners`): the wrapped
functions are the stages' own methods, left unchanged.
"""

from __future__ import annotations

import warnings

import torch
from torch.utils._pytree import tree_flatten, tree_map

WARMUP_CALLS = 2  # cuBLAS/cuDNN workspace set-up and torch.compile happen outside the capture


def _signature(value):
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape), value.dtype, value.device)
    return value if isinstance(value, (int, float, bool, str, type(None))) else ("object", id(value))


def cache_key(args: tuple, kwargs: dict) -> tuple:
    """What one capture is valid for: every tensor's shape, dtype and device, every Python value (which the
    capture bakes in), any other object by identity, and the keyword names."""
    leaves, _ = tree_flatten((args, kwargs))
    return tuple(_signature(x) for x in leaves) + (tuple(kwargs),)


class CUDAGraphed:
    def __init__(self, fn, pool=None):
        self.fn = fn
        self.pool = pool  # a memory pool shared with other graphs, or None for a fresh one at first capture
        self.captures = {}  # signature -> (static inputs, graph, static outputs)
        self.failed = False

    def __call__(self, *args, **kwargs):
        leaves, _ = tree_flatten((args, kwargs))
        if self.failed or not any(isinstance(x, torch.Tensor) and x.is_cuda for x in leaves):
            return self.fn(*args, **kwargs)
        key = cache_key(args, kwargs)
        if key not in self.captures:
            try:
                self.captures[key] = self._capture(args, kwargs)
            except Exception as error:  # a host sync or an unsupported op: keep working, eagerly
                warnings.warn(f"CUDA graph capture of {getattr(self.fn, '__qualname__', self.fn)} failed "
                              f"({type(error).__name__}: {error}); running it eagerly")
                self.failed = True
                return self.fn(*args, **kwargs)
        static_inputs, graph, static_outputs = self.captures[key]
        for static, value in zip(tree_flatten(static_inputs)[0], leaves):
            if isinstance(static, torch.Tensor):
                static.copy_(value)
        graph.replay()
        return tree_map(lambda x: x.clone() if isinstance(x, torch.Tensor) else x, static_outputs)

    def _capture(self, args, kwargs):
        static_args, static_kwargs = tree_map(lambda x: x.clone() if isinstance(x, torch.Tensor) else x, (args, kwargs))
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_CALLS):
                self.fn(*static_args, **static_kwargs)
        torch.cuda.current_stream().wait_stream(side)
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            static_outputs = self.fn(*static_args, **static_kwargs)
        return (static_args, static_kwargs), graph, static_outputs
