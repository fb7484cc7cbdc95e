"""Choose a speed recipe: sweep samplers and step counts on your prompts, score each against a reference.

    python scripts/sweep_recipes.py --prompts prompts.txt --reference REF_DIR --out sweep/ \
        [--samplers ddim dpmsolver++ dpmsolver++karras] [--steps 10 20 50 200] [--model cvssp/audioldm2]
        [--seconds 10] [--guidance 3.5] [--seed 0] [--batch-size 4] [--device cuda] [--dtype float16]

For every sampler x steps setting, each prompt is generated with the same seed into OUT/<sampler>-<steps>/
(a WAV per prompt and the prompts.csv that goes with them), then scored with `audioldm2_lite.evaluate`
(the checkpoint's own CLAP, loaded once): `clap_score` against the prompts, `fd_clap` against the reference
(a folder, or `--reference-stats` saved by `audioldm2-lite-eval --save-stats`), and `lsd` /
`clap_audio_similarity` when the reference folder holds the same file names. One row per setting is
printed as it finishes, with the generation time per clip; every report goes to OUT/sweep.json.

Prompts: a .txt file (one prompt per line, written as 0000.wav, 0001.wav, ...) or a CSV / JSONL with
`prompt` (or `text`) and optionally `file_name` (e.g. AudioCaps' captions: output files then carry the
reference's names, so the paired metrics apply). `dpmsolver++karras` is DPM-Solver++ on Karras noise levels.
A reference can be real recordings of the prompts or the checkpoint's default recipe (`--samplers ddim
--steps 200` into its own folder). fd_clap needs more files than CLAP's 512 dimensions to be unbiased.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a clone without installing


def sampler_choices() -> dict:
    """--samplers names: every samplers.SAMPLERS name, and <name>karras where Karras levels are offered."""
    from audioldm2_lite.generation.samplers import SAMPLERS

    choices = {name: (name, False) for name in SAMPLERS}
    choices.update({f"{name}karras": (name, True) for name, spec in SAMPLERS.items() if "karras" in spec.noise_levels})
    return choices


SAMPLER_CHOICES = sampler_choices()


def read_prompts(file: Path) -> list[tuple[str, str]]:
    """(output file name, prompt) per prompt."""
    from audioldm2_lite.evaluate import read_prompt_rows

    if file.suffix.lower() == ".txt":  # as a prompts file: blank lines and '#' comments skipped
        from audioldm2_lite.prompt_files import read_rows

        rows = [(None, record["prompt"]) for _, record in read_rows(file)]
    else:
        rows = read_prompt_rows(file)
    named = []
    for i, (name, prompt) in enumerate(rows):
        name = name or f"{i:04d}.wav"
        named.append((name if Path(name).suffix.lower() in (".wav", ".flac") else name + ".wav", prompt))
    return named


def generate(pipe, prompts, folder: Path, sampler: str, steps: int, args) -> float:
    """Write every prompt's audio and prompts.csv into `folder`; seconds of generation per clip."""
    import torch

    from audioldm2_lite.cli import write_audio

    scheduler, karras = SAMPLER_CHOICES[sampler]
    start = time.perf_counter()
    for first in range(0, len(prompts), args.batch_size):
        batch = prompts[first:first + args.batch_size]
        generator = torch.Generator(pipe.device).manual_seed(args.seed + first)  # the same noise in every setting
        audio = pipe([prompt for _, prompt in batch], audio_length_in_s=args.seconds, num_inference_steps=steps,
                     guidance_scale=args.guidance, negative_prompt=[args.negative_prompt] * len(batch),
                     scheduler=scheduler, karras_sigmas=karras, generator=generator).audios
        for (name, _), waveform in zip(batch, audio):
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            write_audio(folder / name, waveform, pipe.sampling_rate)
    seconds = (time.perf_counter() - start) / len(prompts)
    with open(folder / "prompts.csv", "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([("file_name", "prompt"), *prompts])
    return seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", required=True, type=Path, help=".txt (one per line), or CSV / JSONL")
    reference = parser.add_mutually_exclusive_group(required=True)
    reference.add_argument("--reference", help="folder of reference audio")
    reference.add_argument("--reference-stats", help="an audioldm2-lite-eval --save-stats file")
    parser.add_argument("--out", required=True, type=Path, help="folder for one sub-folder per setting")
    parser.add_argument("--samplers", nargs="+", default=["ddim", "dpmsolver++"], choices=list(SAMPLER_CHOICES))
    parser.add_argument("--steps", nargs="+", type=int, default=[20, 50, 200])
    parser.add_argument("--model", default="cvssp/audioldm2")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--guidance", type=float, default=3.5)
    parser.add_argument("--negative-prompt", default="")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=4, help="prompts per pipeline call and CLAP batch")
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"])
    args = parser.parse_args(argv)

    import torch

    from audioldm2_lite import AudioLDM2Pipeline
    from audioldm2_lite.evaluate import ClapScorer, evaluate

    prompts = read_prompts(args.prompts)
    pipe = AudioLDM2Pipeline.from_pretrained(args.model, device=args.device,
                                             dtype=getattr(torch, args.dtype) if args.dtype else None)
    scorer = ClapScorer(args.model, device=pipe.device)  # float32 CLAP for scoring, whatever the pipeline's dtype
    pipe(prompts[0][1], audio_length_in_s=args.seconds, num_inference_steps=1)  # warm-up, so s/clip compares
    print(f"{len(prompts)} prompts, {args.seconds} s each, on {pipe.device}; reference "
          f"{args.reference or args.reference_stats}")
    print(f"{'sampler':<20}{'steps':>6}{'s/clip':>9}{'clap_score':>12}{'fd_clap':>10}{'lsd':>8}")
    reports = {}
    for sampler in args.samplers:
        for steps in args.steps:
            folder = args.out / f"{sampler}-{steps}"
            folder.mkdir(parents=True, exist_ok=True)
            seconds = generate(pipe, prompts, folder, sampler, steps, args)
            report = evaluate(folder, reference=args.reference, reference_stats=args.reference_stats,
                              prompts=folder / "prompts.csv", batch_size=args.batch_size, progress=False,
                              scorer=scorer)
            report["seconds_per_clip"] = seconds
            reports[folder.name] = report
            lsd = f"{report['lsd']:8.3f}" if "lsd" in report else f"{'-':>8}"
            print(f"{sampler:<20}{steps:>6}{seconds:9.2f}{report['clap_score']:12.4f}{report['fd_clap']:10.4f}{lsd}",
                  flush=True)
    for note in sorted({note for report in reports.values() for note in report["notes"]}):
        print(f"note: {note}")
    (args.out / "sweep.json").write_text(json.dumps(reports, indent=2, ensure_ascii=False) + "\n")
    print(f"reports: {args.out / 'sweep.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
