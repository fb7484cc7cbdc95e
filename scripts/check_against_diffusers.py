"""Check our pipeline against diffusers' on one checkpoint, stage by stage and end to end.

    python scripts/check_against_diffusers.py --model cvssp/audioldm2

Loads both from the same hub id or hub-layout folder in float32 and prints, for every stage (CLAP text,
Flan-T5, the text path through projection and GPT-2, UNet, VAE decoder, vocoder, CLAP audio tower, and
the waveform of a short DPM-Solver++ run), the measured `max |ours - diffusers| / max |diffusers|` beside
the README's tolerance ("Parity with diffusers"). Exits 1 if any stage is past its tolerance. The
comparisons themselves live in tests/reference.py (`stage_errors`), shared with the test suite.

Needs diffusers and transformers (the `test` extra) and, for a hub id not yet cached, internet access.
Memory: both pipelines at once, about 9 GB in float32 for cvssp/audioldm2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "scripts")]


def quiet_libraries() -> None:
    """A table, not a log: the loaders' progress bars and the tokenizers' truncation notices say nothing here."""
    import warnings

    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    warnings.simplefilter("ignore")
    for logging in (diffusers_logging, transformers_logging):
        logging.set_verbosity_error()
        logging.disable_progress_bar()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cvssp/audioldm2",
                        help="hub id or hub-layout folder (default: cvssp/audioldm2)")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument("--seconds", type=float, default=1.0, help="audio length for the decoders and the run")
    parser.add_argument("--steps", type=int, default=5, help="DPM-Solver++ steps of the end-to-end run")
    args = parser.parse_args(argv)

    import torch

    from audioldm2_lite import AudioLDM2Pipeline, CheckpointError
    from audioldm2_lite.generation.hub import resolve_checkpoint

    try:
        folder = resolve_checkpoint(args.model)
    except CheckpointError as error:
        print(f"check_against_diffusers: error: {error}", file=sys.stderr)
        return 2
    from reference import TOLERANCES, diffusers_pipeline, stage_errors

    quiet_libraries()

    # the tolerances are float32's: keep TF32 (on by default for cuDNN convolutions) out of the comparison
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    # diffusers computes its conversion's model: ours as it (the authors' model is checked in tests/test_authors.py)
    ours = AudioLDM2Pipeline.from_pretrained(folder, device=args.device, dtype=torch.float32, reference="diffusers")
    reference = diffusers_pipeline(folder).to(args.device)
    reference.set_progress_bar_config(disable=True)

    print(f"{args.model} on {args.device}, float32: max |ours - diffusers| / max |diffusers|")
    failed = []
    for stage, error in stage_errors(ours, reference, seconds=args.seconds, steps=args.steps):
        tolerance = TOLERANCES[stage]
        verdict = "ok" if error <= tolerance else "PAST TOLERANCE"
        print(f"{stage:40s} {error:9.1e}   tolerance {tolerance:.0e}   {verdict}", flush=True)
        if error > tolerance:
            failed.append(stage)
    if failed:
        print(f"check_against_diffusers: {len(failed)} stage(s) past tolerance: {', '.join(failed)}", file=sys.stderr)
        return 1
    print("every stage within tolerance")
    return 0


if __name__ == "__main__":
    sys.exit(main())
