"""Every mode on every surface: the same request gives the same samples from the Python call, the command line,
a prompt file and the page's function (test_app.py drives the page itself in a browser), because each surface only builds a `Request` and calls
`AudioLDM2Pipeline.generate` (tests on the tiny checkpoints; speech on the tiny speech checkpoint).

Modes: text to audio, speech, style transfer, inpainting, bandwidth extension, and a LoRA with text to audio and
with an edit. The files are 16-bit PCM: a surface's file must hold the Python call's samples rounded to 16 bits,
within one quantisation step (two processes' float32 runs may differ in the last bits, which the rounding can
turn into one step).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from audioldm2_lite import AudioLDM2Pipeline
from audioldm2_lite.cli import main
from audioldm2_lite.console import pcm16
from audioldm2_lite.generation.lora import apply_lora, save_lora
from audioldm2_lite.generation.request import Request

STEP = 1 / 32768  # one 16-bit quantisation step
COMMON = dict(negative_prompt="low quality", steps=3, seed=11)


def recording(path: Path, seconds: float = 0.8, rate: int = 22050) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    soundfile.write(path, 0.4 * np.sin(2 * np.pi * (300 * t + 400 * t**2)), rate)
    return path


@pytest.fixture(scope="module")
def files(tiny_checkpoint, tmp_path_factory):
    """An input recording and a LoRA adapter (random, non-zero) for the tiny checkpoint."""
    folder = tmp_path_factory.mktemp("surfaces")
    unet = AudioLDM2Pipeline.from_pretrained(tiny_checkpoint, device="cpu").unet
    apply_lora(unet, rank=2)
    with torch.no_grad():
        for name, parameter in unet.named_parameters():
            if ".lora_" in name:
                parameter.copy_(0.5 * torch.randn(parameter.shape, generator=torch.Generator().manual_seed(1)))
    save_lora(unet, folder / "lora.safetensors")
    return dict(audio=recording(folder / "in.wav"), lora=folder / "lora.safetensors")


MODES = {  # name: (checkpoint fixture, request fields)
    "text to audio": ("tiny_checkpoint", dict(seconds=0.64, candidates=2)),
    "speech": ("tiny_speech_checkpoint", dict(seconds=0.64, transcription="hello there")),
    "style transfer": ("tiny_checkpoint", dict(audio="AUDIO", strength=0.7, scheduler="dpmsolver++", steps=4)),
    "inpainting": ("tiny_checkpoint", dict(audio="AUDIO", regenerate_seconds=(0.2, 0.5))),
    "bandwidth extension": ("tiny_checkpoint", dict(audio="AUDIO", regenerate_above_hz=4000.0)),
    "text to audio + LoRA": ("tiny_checkpoint", dict(seconds=0.64, lora="LORA", lora_scale=0.8)),
    "inpainting + LoRA": ("tiny_checkpoint", dict(audio="AUDIO", regenerate_seconds=(0.1, 0.3), lora="LORA")),
}


def command_line(fields: dict) -> list[str]:
    """The request's fields as audioldm2-lite options."""
    args = []
    for name, value in fields.items():
        flag = "--" + name.replace("_", "-")
        if name == "prompt":
            continue
        if name == "regenerate_seconds":
            value = f"{value[0]}:{value[1]}"
        args += [flag, str(value)]
    return args


def assert_file_holds(path: Path, audio: np.ndarray, label: str):
    written, rate = soundfile.read(path, dtype="float64")
    assert rate == 16000 and written.shape == audio.shape, label
    steps = np.abs(written - pcm16(audio) / 32768).max() / STEP  # soundfile reads 16-bit PCM back as k / 32768
    assert steps <= 1, f"{label}: {steps:g} steps from the Python call's samples"


@pytest.mark.parametrize("mode", MODES)
def test_the_same_request_gives_the_same_samples_on_every_surface(mode, files, request, tmp_path, capsys):
    checkpoint_fixture, fields = MODES[mode]
    checkpoint = request.getfixturevalue(checkpoint_fixture)
    fields = {k: str(files["audio"]) if v == "AUDIO" else str(files["lora"]) if v == "LORA" else v
              for k, v in fields.items()}
    fields = {"prompt": "a violin melody", **COMMON, **fields}
    job = Request(**fields)

    # Python: the pipeline's own entry for programs, and diffusers' call with the same values
    pipe = AudioLDM2Pipeline.from_pretrained(checkpoint, device="cpu", lora=job.lora, lora_scale=job.lora_scale)
    [result] = pipe.generate(job)
    reference = result.audios[0]
    edit = {k: fields[k] for k in ("audio", "strength", "regenerate_seconds", "regenerate_above_hz") if k in fields}
    direct = pipe(job.prompt, negative_prompt=job.negative_prompt, num_inference_steps=job.steps, seed=job.seed,
                  audio_length_in_s=job.seconds, num_waveforms_per_prompt=job.candidates,
                  scheduler=job.scheduler, transcription=job.transcription, **edit).audios[0]
    np.testing.assert_array_equal(direct, reference)  # the same arithmetic, in the same process: bit-equal

    # the page: its function, as its events call it; it plays the 16-bit samples the command line writes
    app = pytest.importorskip("audioldm2_lite.web.app", reason="the page is an optional extra: pip install -e '.[app]'")
    played, seed = app.generate(pipe, app.make_request(job.prompt, job.negative_prompt, job.seconds, job.steps,
                                                       job.scheduler, job.guidance, job.seed, job.candidates,
                                                       job.transcription, edit or None))
    assert seed == job.seed and len(played) == job.candidates
    np.testing.assert_array_equal(played[0][1], pcm16(reference))  # the same process: the very same samples

    # the command line
    out = tmp_path / "cli.wav"
    assert main([job.prompt, "-o", str(out), "--model", str(checkpoint), "--device", "cpu", "--quiet",
                 *command_line(fields)]) == 0, capsys.readouterr().err
    assert_file_holds(out, reference, f"{mode}: command line")
    record = json.loads(soundfile.SoundFile(out).comment)  # the file says how it was made, completely
    for name, value in fields.items():
        assert record[name] == (list(value) if isinstance(value, tuple) else value), (mode, name)

    # a prompt file: the request's fields as a row's columns (the LoRA, one per run, as an option)
    row = {k: (f"{v[0]}:{v[1]}" if k == "regenerate_seconds" else v) for k, v in fields.items()
           if k not in ("lora", "lora_scale")}
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({**row, "file_name": "row.wav"}) + "\n")
    options = [f"--{k.replace('_', '-')}={fields[k]}" for k in ("lora", "lora_scale") if k in fields]
    assert main(["--prompts-file", str(prompts), "--output-dir", str(tmp_path / "rows"), "--model", str(checkpoint),
                 "--device", "cpu", "--quiet", *options]) == 0, capsys.readouterr().err
    assert_file_holds(tmp_path / "rows" / "row.wav", reference, f"{mode}: prompt file")
    [line] = [json.loads(text) for text in (tmp_path / "rows" / "manifest.jsonl").read_text().splitlines()]
    assert {k: line[k] for k in record if k != "audio"} == {k: v for k, v in record.items() if k != "audio"}
