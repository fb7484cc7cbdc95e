"""Validation while fine-tuning: fixed prompts, generated from the weights being trained, heard and scored.

Every `validation_every` steps the training loop (train.py) hands its UNet (the EMA weights when on) to
`Validation`, which generates each prompt of the validation file with the pipeline (`AudioLDM2Pipeline`,
the same call as the CLI's; DPM-Solver++ with `steps` steps, guidance 3.5, the training clip length) and
seed i for prompt i, so from one step to the next only the weights change. Into OUT/training/validation/step-N/:

    00-a_dog_barks.wav ...   the audio
    prompts.jsonl            file_name and prompt per file (what audioldm2-lite-eval --prompts reads)
    report.json              the evaluation report (evaluate.py): clap_score, fd_clap, per-file scores

`clap_score` is the mean cosine between each file's CLAP audio embedding and its prompt's text embedding;
`fd_clap` (with reference stats from `audioldm2-lite-eval REFERENCE_DIR --save-stats ref.npz`) the Fréchet
distance of the files' embeddings to the reference set's. Both use the base checkpoint's own CLAP, which
fine-tuning the UNet does not change. The text stages, VAE, vocoder and CLAP are loaded on first use and
stay loaded. Each validation adds a row (step, clap_score, fd_clap) to OUT/training/validation.csv, and the
scores and the audio to TensorBoard when the loop has it open.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import soundfile
import torch

from ..console import slug
from ..evaluate import EvaluationError, evaluate, read_prompt_rows, read_stats
from ..generation.authors_models import folder_stage
from ..generation.ranking import ClapScorer
from ..generation.loading import load_component, load_config
from ..generation.pipeline import AudioLDM2Pipeline
from ..generation.samplers import SchedulerConfig
from ..generation.speech import load_conditioner

GUIDANCE = 3.5  # the pipeline's default


def read_validation_prompts(file) -> list[str]:
    """.txt: one prompt a line (blank lines and '#' comments skipped); .csv / .jsonl: a `prompt` (or `text`) column."""
    file = Path(file)
    if file.suffix.lower() == ".txt" and file.is_file():
        prompts = [line.strip() for line in file.read_text(encoding="utf-8").splitlines()
                   if line.strip() and not line.lstrip().startswith("#")]
    else:
        prompts = [prompt for _, prompt in read_prompt_rows(file)]
    if not prompts:
        raise EvaluationError(f"validation prompts file '{file}' holds no prompts")
    return prompts


class Validation:
    def __init__(self, root: Path, prompts_file, reference_stats, steps: int, seconds: float, device,
                 reference: str = "diffusers", scheduler: str = "dpmsolver++"):
        self.root, self.steps, self.seconds, self.device, self.scheduler = root, steps, seconds, device, scheduler
        self.reference = reference  # the model trained: authors.py
        self.prompts = read_validation_prompts(prompts_file)
        self.reference_stats = reference_stats
        if reference_stats is not None:
            read_stats(reference_stats)  # a bad file is an error now, not after the first steps
            if len(self.prompts) < 2:
                raise EvaluationError("fd_clap needs a covariance: give at least 2 validation prompts")
        self.names = [f"{i:02d}-{slug(prompt)}.wav" for i, prompt in enumerate(self.prompts)]
        self.pipe = self.scorer = None

    def forget_after(self, folder: Path, step: int) -> None:
        """The rows of validation.csv after `step` go: a resumed run does the validations after its checkpoint
        again (and a new run, step -1, all of them)."""
        table = folder / "validation.csv"
        if table.is_file():
            rows = list(csv.reader(table.read_text().splitlines()))
            kept = [rows[0], *(r for r in rows[1:] if int(r[0]) <= step)]
            table.write_text("".join(",".join(r) + "\n" for r in kept))

    @torch.no_grad()
    def __call__(self, unet, step: int, folder: Path, board=None) -> dict:
        """Generate and score every prompt with `unet` into folder/validation/step-N, add a row to
        folder/validation.csv and the scores and audio to TensorBoard (`board`); returns {metric: value}."""
        if self.pipe is None:  # the pipeline around the UNet being trained: its weights, not a copy
            conditioner = load_conditioner(self.root, device=self.device, clap_pad_to_max_length=False,
                                           reference=self.reference)  # the authors' 48 kHz / T5-only: their own
            self.pipe = AudioLDM2Pipeline(
                conditioner, unet, load_component(self.root, "vae", device=self.device),
                load_component(self.root, "vocoder", device=self.device, stage=folder_stage(self.root, "vocoder")),
                SchedulerConfig.from_hub(load_config(self.root, "scheduler")), self.root, device=self.device)
            self.scorer = ClapScorer(self.root, self.device, reference=self.reference)
        here = folder / "validation" / f"step-{step}"
        here.mkdir(parents=True, exist_ok=True)
        audios = []
        for seed, (prompt, name) in enumerate(zip(self.prompts, self.names)):
            audio = self.pipe(prompt, audio_length_in_s=self.seconds, num_inference_steps=self.steps,
                              guidance_scale=GUIDANCE, scheduler=self.scheduler, seed=seed).audios[0]  # (samples,)
            soundfile.write(here / name, audio, self.pipe.sampling_rate, subtype="FLOAT")
            audios.append(audio)
        lines = [json.dumps({"file_name": name, "prompt": prompt}, ensure_ascii=False)
                 for name, prompt in zip(self.names, self.prompts)]
        (here / "prompts.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        report = evaluate(here, reference_stats=self.reference_stats, prompts=here / "prompts.jsonl",
                          scorer=self.scorer, progress=False)
        (here / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

        scores = {k: report[k] for k in ("clap_score", "fd_clap") if k in report}
        table = folder / "validation.csv"
        new = not table.is_file()
        with open(table, "a", newline="") as file:
            rows = csv.writer(file)
            if new:
                rows.writerow(["step", "clap_score", "fd_clap"])
            rows.writerow([step, *(f"{scores[k]:.6g}" if k in scores else "" for k in ("clap_score", "fd_clap"))])
        if board is not None:
            for key, value in scores.items():
                board.add_scalar(f"validation/{key}", value, step)
            for name, audio in zip(self.names, audios):
                board.add_audio(f"validation/{name[:-4]}", audio[None], step, self.pipe.sampling_rate)
            board.flush()
        return scores
