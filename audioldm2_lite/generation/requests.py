"""Running requests: what `AudioLDM2Pipeline.generate` does with a list of `Request`s, the entry of every program.

    requests --check (request.py), seeds drawn where missing--> --batchable: those that can share one call-->
        --generate_batch: each row's noise from its own seed, its text encoded alone (conditioning_per_row)-->
        one pipeline call per group --> Generated(request as it ran, audios best first, scores) per request

A request's audio depends on the request alone, not on which others share its batch: batched UNet arithmetic
moves it by float rounding only (tests/test_prompt_files.py measures it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .request import Request


@dataclass
class Generated:
    """One request's result: its waveforms (candidates ranked best first), their CLAP scores when ranked, and
    the request as it ran (defaults filled in, the seed used)."""

    request: Request
    audios: np.ndarray  # (candidates, samples) float32 at `sampling_rate`
    scores: np.ndarray | None = None  # (candidates,)


def run_requests(pipe, requests: list[Request], progress: bool = False, callback=None) -> list[Generated]:
    """Every request checked (all before any work) and seeded, then run in groups that share a call, in order."""
    limits = pipe.limits()
    checked = [pipe.with_seed(request.check(limits)) for request in requests]
    results: list[Generated | None] = [None] * len(checked)
    for group in batchable(checked):
        for index, result in zip(group, generate_batch(pipe, [checked[i] for i in group], progress, callback)):
            results[index] = result
    return results


def batchable(requests: list[Request]) -> list[list[int]]:
    """Indices of requests that can share one pipeline call, in order: text to audio with the same length and
    settings together; every edit alone (each has its own input)."""
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(requests):
        key = ("edit", i) if r.is_edit else (r.seconds, r.steps, r.scheduler, r.karras, r.guidance, r.candidates)
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def generate_batch(pipe, requests: list[Request], progress: bool = False, callback=None) -> list[Generated]:
    """Requests that share one pipeline call (see `batchable`); each with its own noise and text encoding."""
    first = requests[0]
    n, guided = first.candidates, first.guided
    edit = dict(audio=first.audio, audio_sampling_rate=first.audio_sampling_rate, strength=first.strength,
                regenerate_seconds=first.regenerate_seconds,
                regenerate_above_hz=first.regenerate_above_hz) if first.is_edit else {}
    embeds, latents = {}, None
    if len(requests) > 1:  # each row encoded alone, its noise from its own generator
        embeds = conditioning_per_row(pipe, requests, guided)
        frames, _ = pipe.latent_frames(first.seconds)
        latents = torch.cat([pipe.prepare_latents(n, frames, torch.Generator().manual_seed(r.seed))
                             for r in requests])  # (B * n, 8, T/4, 16)
    result = pipe(
        None if embeds else first.prompt, negative_prompt=None if embeds else first.negative_prompt,
        audio_length_in_s=None if first.is_edit else first.seconds, num_inference_steps=first.steps,
        guidance_scale=first.guidance, num_waveforms_per_prompt=n, latents=latents,
        generator=None if embeds else torch.Generator().manual_seed(first.seed), scheduler=first.scheduler,
        karras_sigmas=first.karras, progress=progress, callback=callback,
        transcription=None if embeds else first.transcription, **edit, **embeds,
    )
    audio, scores = result.audios, result.scores
    if embeds and n > 1:  # ranked here, each row against its own prompt
        audio, scores = pipe.rank_candidates([r.prompt for r in requests], torch.from_numpy(audio), n)
        audio = audio.numpy()
    scores = None if scores is None else scores.numpy()
    return [Generated(r, audio[i * n:(i + 1) * n], None if scores is None else scores[i * n:(i + 1) * n])
            for i, r in enumerate(requests)]


def conditioning_per_row(pipe, requests: list[Request], guided: bool) -> dict:
    """Each request's conditioning encoded alone, stacked as the call's `*prompt_embeds` arguments.

    Encoded together, the text stages pad a batch to its longest prompt and cut each negative prompt to
    that length, which moves a row's audio by ~1e-5 (relative) with the batch's other prompts. Encoded
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

    generated, t5, mask = half(1 if guided else 0)
    embeds = dict(generated_prompt_embeds=generated, prompt_embeds=t5, attention_mask=mask)
    if guided:
        generated, t5, mask = half(0)
        embeds.update(negative_generated_prompt_embeds=generated, negative_prompt_embeds=t5,
                      negative_attention_mask=mask)
    return embeds
