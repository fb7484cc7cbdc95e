"""cuda_graphs.py and AudioLDM2Pipeline.optimize, on the CPU: what a capture is keyed on, the eager
fallbacks, and that optimizing leaves every stage a plain module and can be undone.

Capturing and replaying a real CUDA graph needs a GPU; here `ClaimsCuda` tensors take the CUDA path of
`CUDAGraphed.__call__`, and a stand-in capture records what would be captured and replays it eagerly.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.utils._pytree import tree_map

from audioldm2_lite import AudioLDM2Pipeline
from audioldm2_lite.generation.cuda_graphs import CUDAGraphed, cache_key
from audioldm2_lite.models.unet import UNet


class ClaimsCuda(torch.Tensor):
    """A CPU tensor that says it is on CUDA, to reach the capture path of CUDAGraphed."""

    @property
    def is_cuda(self):
        return True


def claims_cuda(*shape, dtype=torch.float32):
    return torch.randn(*shape).to(dtype).as_subclass(ClaimsCuda)


def stage(x, y, scale=2.0):
    return x * scale + y.sum(), (x - y).abs()


def test_cache_key_changes_with_what_a_capture_bakes_in():
    x, y = torch.ones(2, 3), torch.ones(3)
    key = cache_key((x, y), {"scale": 2.0})
    assert cache_key((torch.zeros(2, 3), torch.zeros(3)), {"scale": 2.0}) == key  # values are copied in, not keyed
    different = [
        cache_key((torch.ones(4, 3), y), {"scale": 2.0}),  # shape
        cache_key((x.double(), y), {"scale": 2.0}),  # dtype
        cache_key((x, y), {"scale": 3.0}),  # a Python value is baked into the capture
        cache_key((x, y), {}),  # the keyword is missing
        cache_key((x, y, None), {"scale": 2.0}),  # one more argument
        cache_key((x, y), {"scale": torch.ones(())}),  # a tensor where there was a number
    ]
    assert len({key, *different}) == len(different) + 1
    thing, other = object(), object()  # any other object: by identity
    assert cache_key((thing,), {}) == cache_key((thing,), {}) != cache_key((other,), {})


def test_cpu_tensors_run_the_function_directly(monkeypatch):
    monkeypatch.setattr(CUDAGraphed, "_capture", lambda *a: pytest.fail("a CPU call must not capture"))
    graphed = CUDAGraphed(stage)  # no CUDA needed to build one: the pool is made at the first capture
    x, y = torch.randn(2, 3), torch.randn(3)
    for ours, expected in zip(graphed(x, y, scale=0.5), stage(x, y, scale=0.5)):
        assert torch.equal(ours, expected)
    assert graphed.captures == {} and not graphed.failed


def test_failed_capture_warns_once_then_runs_eagerly(monkeypatch):
    def failing_capture(self, args, kwargs):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(CUDAGraphed, "_capture", failing_capture)
    graphed = CUDAGraphed(stage)
    x, y = claims_cuda(2, 3), claims_cuda(3)
    with pytest.warns(UserWarning, match="CUDA graph capture of stage failed .*running it eagerly"):
        first = graphed(x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second warning would raise here
        second = graphed(claims_cuda(5, 3), claims_cuda(3))  # a new shape: no new attempt
    assert graphed.failed and graphed.captures == {}
    assert torch.equal(first[0], stage(x, y)[0]) and second[0].shape == (5, 3)


def test_one_capture_per_signature_inputs_copied_in_outputs_copied_out(monkeypatch):
    """With a stand-in capture whose replay reruns the function on the static buffers (what a graph does)."""
    captured = []

    def capture(self, args, kwargs):
        static_args, static_kwargs = tree_map(lambda x: x.clone() if isinstance(x, torch.Tensor) else x, (args, kwargs))
        static_outputs = self.fn(*static_args, **static_kwargs)

        class Graph:
            def replay(self_graph):
                for static, new in zip(static_outputs, self.fn(*static_args, **static_kwargs)):
                    static.copy_(new)

        captured.append(cache_key(args, kwargs))
        return (static_args, static_kwargs), Graph(), static_outputs

    monkeypatch.setattr(CUDAGraphed, "_capture", capture)
    graphed = CUDAGraphed(stage)
    x1, x2, y = claims_cuda(2, 3), claims_cuda(2, 3), claims_cuda(3)
    first = graphed(x1, y)
    second = graphed(x2, y)  # same signature: a replay on x2's values
    assert len(captured) == 1
    assert torch.equal(second[0], stage(x2, y)[0]) and torch.equal(first[0], stage(x1, y)[0])  # a copy, not the buffer
    graphed(x1, y, scale=3.0)
    graphed(claims_cuda(4, 3), y)
    assert len(captured) == 3


# ---------------------------------------------------------------- the pipeline


STAGE_METHODS = ("forward", "decode", "vocode", "generate", "get_text_features", "encode_tokens")


def assert_plain_stages(pipe):
    """Nothing is assigned over a method on any stage, nor over the pipeline's own predict_noise."""
    c = pipe.conditioner
    for module in (pipe.unet, pipe.vae, pipe.vocoder, c, c.clap, c.t5, c.projection, c.gpt2):
        assert not set(STAGE_METHODS) & set(vars(module)), type(module).__name__
    assert "predict_noise" not in vars(pipe) and "decode" not in vars(pipe)
    assert pipe.vae.decode.__func__ is type(pipe.vae).decode
    assert pipe.vocoder.forward.__func__ is type(pipe.vocoder).forward
    assert type(pipe.unet) is UNet  # not a torch.compile wrapper


def generate(pipe):
    return pipe("a dog barks", audio_length_in_s=0.5, num_inference_steps=2, output_type="pt",
                generator=torch.Generator().manual_seed(0)).audios


def test_cpu_pipeline_ignores_cuda_graphs(tiny_checkpoint):
    pipe = AudioLDM2Pipeline.from_pretrained(tiny_checkpoint, device="cpu")
    before = generate(pipe)
    pipe.optimize()  # cuda_graphs=True by default: nothing to do off CUDA
    assert pipe.runners == pipe.plain_runners()
    assert_plain_stages(pipe)
    assert torch.equal(generate(pipe), before)


def test_graphed_and_compiled_runners_are_wired_in_and_can_be_undone(tiny_checkpoint, monkeypatch):
    """optimize() as on CUDA (a pretend device and pool; torch.compile replaced by a recorder, since compiling
    takes minutes on the CPU), then run on the CPU: every runner is called, the graphed ones with CPU tensors
    fall through to their stage, and the audio is the same. Undoing restores the plain runners."""
    pipe = AudioLDM2Pipeline.from_pretrained(tiny_checkpoint, device="cpu")
    before = generate(pipe)
    compiled = []

    def compile_recorder(fn, **options):
        compiled.append(fn)
        return lambda *args, **kwargs: fn(*args, **kwargs)

    monkeypatch.setattr(torch, "compile", compile_recorder)
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: "pool")
    pipe.device = torch.device("cuda")
    pipe.optimize(compile=True)
    pipe.device = torch.device("cpu")
    runners = pipe.runners
    # the stages are compiled, not replaced: the UNet inside the engine's call of it (guided_unet.py)
    assert compiled == [pipe.guided_unet, pipe.vae.decode, pipe.vocoder] and pipe.guided_unet.unet is pipe.unet
    graphed = [runners.encode_tokens, runners.predict_noise, runners.decode_mel, runners.vocode]
    assert all(isinstance(r, CUDAGraphed) and r.pool == "pool" for r in graphed)
    assert runners.unet is not pipe.unet
    assert_plain_stages(pipe)
    assert torch.equal(generate(pipe), before)
    assert all(r.captures == {} and not r.failed for r in graphed)

    pipe.optimize(compile=False, cuda_graphs=False)
    assert pipe.runners == pipe.plain_runners()
    assert torch.equal(generate(pipe), before)


def test_cuda_graphs_refuse_offload(tiny_checkpoint, monkeypatch):
    pipe = AudioLDM2Pipeline.from_pretrained(tiny_checkpoint, device="cpu", offload=True)
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: "pool")
    pipe.device = torch.device("cuda")
    with pytest.raises(ValueError, match="cuda_graphs and offload do not combine"):
        pipe.optimize()
