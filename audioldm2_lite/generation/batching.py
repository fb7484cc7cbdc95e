"""Batching requests: what `AudioLDM2Pipeline.generate` does with a list of `Request`s, the entry of every program.

    requests --check (request.py), seeds drawn where missing--> --batchable: those that can share one run-->
        --generate_batch: each row's noise from its own seed, its text encoded alone (conditioning_per_row)-->
        one `AudioLDM2Pipeline.run` per group --> Generated(request as it ran, audios best first, scores) per request

A request's audio depends on the request alone, not on which others share its batch: batched UNet arithmetic
moves it by float rounding only (tests/test_prompt_files.py measures it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .conditioning import Conditioning, TextConditioner
from .request import Request


@dataclass
class Generated:
    """One request's result: its waveforms (candidates ranked best first), their CLAP scores when ranked, and
    the request as it ran (defaults filled in, the seed used)."""

    request: Request
    audios: np.ndarray  # (candidates, samples) float32 at `sampling_rate`
    scores: np.ndarray | None = None  # (candidates,)


def run_requests(pipe, requests: list[Request], progress: bool = False, callback=None) -> list[Generated]:
    """Every request checked (all before any work) and seeded, then run in groups that share a run, in order."""
    limits = pipe.limits()
    pipe.set_cross_attention_kwargs(None)  # a LoRA at the scale it was loaded with
    checked = [pipe.with_seed(request.check(limits)) for request in requests]
    results: list[Generated | None] = [None] * len(checked)
    for group in batchable(checked):
        for index, result in zip(group, generate_batch(pipe, [checked[i] for i in group], progress, callback)):
            results[index] = result
    return results


def batchable(requests: list[Request]) -> list[list[int]]:
    """Indices of requests that can share one run, in order: text to audio with the same length and
    settings together; every edit alone (each has its own input)."""
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(requests):
        key = ("edit", i) if r.is_edit else (r.seconds, r.steps, r.scheduler, r.karras, r.guidance, r.candidates)
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def generate_batch(pipe, requests: list[Request], progress: bool = False, callback=None) -> list[Generated]:
    """Requests that share one run (see `batchable`); each with its own noise and text encoding."""
    first = requests[0]
    n = first.candidates
    with pipe.progress_stage("encoding the prompt", progress):
        if len(requests) > 1:  # each row encoded alone
            conditioning = conditioning_per_row(pipe, requests, first.guided)
        else:
            conditioning = pipe.encode_prompt(first.prompt, first.negative_prompt, n, first.guided,
                                              transcription=first.transcription)
    generator, latents = torch.Generator().manual_seed(first.seed), None
    if len(requests) > 1:  # each row's noise from its own generator
        frames, _ = pipe.latent_frames(first.seconds)
        generator = None
        latents = torch.cat([pipe.prepare_latents(n, frames, torch.Generator().manual_seed(r.seed))
                             for r in requests])  # (B * n, 8, T/4, 16)
    audio, scores = pipe.run(first, conditioning, generator, latents, [r.prompt for r in requests],
                             callback=callback, progress=progress)
    audio, scores = audio.numpy(), None if scores is None else scores.numpy()
    return [Generated(r, audio[i * n:(i + 1) * n], None if scores is None else scores[i * n:(i + 1) * n])
            for i, r in enumerate(requests)]


def conditioning_per_row(pipe, requests: list[Request], guided: bool) -> Conditioning:
    """Each request's conditioning encoded alone, stacked as one batch ([uncond rows, cond rows] with guidance),
    each row repeated for its candidates.

    Encoded together, the text stages pad a batch to its longest prompt and cut each negative prompt to
    that length, which moves a row's audio (a little, not only by rounding) with the batch's other prompts. Encoded
    alone, only the UNet sees padding, masked in its cross-attention: the same audio to float rounding.
    Every batch is padded to the T5 tokenizer's maximum (128 tokens), not to its longest prompt, so that the
    UNet sees one shape per batch size and length: one CUDA graph each (cuda_graphs.py), not one per length.
    """
    import torch.nn.functional as F

    encoded = [pipe.encode_prompt(r.prompt, r.negative_prompt, 1, guided, transcription=r.transcription)
               for r in requests]  # [uncond, cond] each; the call repeats them per candidate
    length = max(s.shape[1] for _, s, _ in encoded)
    if not pipe.conditioner.speaks:  # VITS fills its tokenizer's slots already
        length = max(length, pipe.conditioner.tokenizer_2.model_max_length)

    def half(h: int):  # one half (0: uncond, 1: cond) of every row, T5 padded to `length` with a zero mask
        generated = torch.cat([g[h:h + 1] for g, _, _ in encoded])  # (B, N, 768)
        t5 = torch.cat([F.pad(s[h:h + 1], (0, 0, 0, length - s.shape[1])) for _, s, _ in encoded])  # (B, L, 1024)
        mask = torch.cat([F.pad(m[h:h + 1], (0, length - m.shape[1])) for _, _, m in encoded])  # (B, L)
        return generated, t5, mask

    conditioning = Conditioning(*half(1 if guided else 0))
    if guided:
        conditioning = Conditioning(*(torch.cat([u, c]) for u, c in zip(half(0), conditioning)))
    # repeating [uncond, cond] row by row keeps the halves apart: (2B, ...) -> (2B * n, ...)
    return TextConditioner.repeat(conditioning, requests[0].candidates)
