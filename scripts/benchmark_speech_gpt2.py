"""Time GPT-2 generating the 512 states of the text-to-speech checkpoints: ours against diffusers'.

    python scripts/benchmark_speech_gpt2.py CHECKPOINT [--device cpu] [--repeats 3] [--states 512]

CHECKPOINT is a hub-layout folder with a full-size `language_model` (e.g. one built by
`make_random_checkpoint.py --config-dir scripts/checkpoint_configs/audioldm2-speech-gigaspeech`). The prompt has
the speech checkpoints' length: [sos, clap, eos, sos_1, 310 VITS slots, eos_1] = 315 positions, about a tenth of
them real phonemes; guided, so there are two prompts ([uncond, cond]). Ours generates both in one batch with a
fixed-size key/value cache (gpt2.py); diffusers' `generate_language_model` runs once per half, as its pipeline
does. Prints the median time per side and the ratio. `--states` generates fewer states (diffusers' loop did not
finish 512 full-size states in 10 minutes on the shared 2-core CPU where this was written).
"""

from __future__ import annotations

import argparse
import statistics
import types

import torch
from timing import seconds_per_call


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--states", type=int, default=512)
    args = parser.parse_args()

    from diffusers import AudioLDM2Pipeline
    from transformers import GPT2LMHeadModel

    from audioldm2_lite import load_component

    device = torch.device(args.device)
    ours = load_component(args.checkpoint, "language_model", device=device)
    reference = GPT2LMHeadModel.from_pretrained(f"{args.checkpoint}/language_model").to(device).eval()
    reference.lm_head = torch.nn.Identity()  # only hidden states are read
    holder = types.SimpleNamespace(language_model=reference)

    torch.manual_seed(0)
    embeds = torch.randn(2, 315, ours.config.n_embd, device=device)
    mask = torch.zeros(2, 315, dtype=torch.long, device=device)
    mask[:, :4] = mask[:, -1] = 1
    mask[1, 4:4 + 31] = 1  # the conditional half's phonemes and end token; the unconditional half has none

    def run_ours():
        return ours.generate(embeds, mask, args.states)

    def run_diffusers():
        return torch.cat([AudioLDM2Pipeline.generate_language_model(holder, embeds[i:i + 1], attention_mask=mask[i:i + 1],
                                                                    max_new_tokens=args.states) for i in range(2)])

    times = {"ours": [], "diffusers": []}
    with torch.no_grad():
        outputs = {"ours": run_ours(), "diffusers": run_diffusers()}  # warm-up, and the outputs to compare
        for _ in range(args.repeats):
            for name, run in (("ours", run_ours), ("diffusers", run_diffusers)):  # alternating
                times[name].append(seconds_per_call(run, device, repeats=1))
    error = ((outputs["ours"] - outputs["diffusers"]).abs().max() / outputs["diffusers"].abs().max()).item()
    ours_s, diffusers_s = statistics.median(times["ours"]), statistics.median(times["diffusers"])
    print(f"{args.states} states, batch [uncond, cond], {device}, {torch.get_num_threads()} threads: ours {ours_s:.2f} s, "
          f"diffusers {diffusers_s:.2f} s, speedup {diffusers_s / ours_s:.2f}x (max_rel_error {error:.1e})")


if __name__ == "__main__":
    main()
