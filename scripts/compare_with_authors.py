"""Compare our pipeline, and diffusers driven as the authors' model, with a reference run of the authors' code.

The reference folder comes from scripts/authors_reference.py (the authors' code on random weights, in its own
venv) and scripts/authors_convert.py (diffusers' conversion script: `hub_layout/`). Runs in this project's venv:

    python scripts/compare_with_authors.py /work/authors-refs/audioldm2-full-tiny [--reference authors|diffusers]

For each guidance scale of the reference run (3.5 and 1.0; 4 DDIM steps, eta 0, the same starting noise x_T)
it prints the relative L2 error, ||ours - authors|| / ||authors||, of the latents before the VAE and of the
waveform (the authors' vocoder output is untrimmed: its first len(ours) samples are compared), for:
- ours: AudioLDM2Pipeline on the converted folder; `--reference` is passed as `reference=` where our pipeline
  takes it (from_pretrained or the call), and reported as not passed otherwise;
- diffusers as it is (the conversion's config: 8 heads per block, "" through CLAP/T5/GPT-2 as unconditional);
- diffusers driven as the authors' model: `attention_head_dim` = heads of 32 channels per level,
  `negative_generated_prompt_embeds` zeros, `negative_prompt_embeds` T5("") with its mask of ones (padded with
  masked positions to the prompt's T5 length, which diffusers requires), CLAP text LayerNorm eps 1e-5;
- diffusers with one fix at a time, to show what each accounts for.
"""

import argparse
import inspect
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

AUTHORS_HEAD_CHANNELS = 32  # the authors' UNet config: num_head_channels 32 (openaimodel.py: heads = channels // 32)
AUTHORS_CLAP_TEXT_EPS = 1e-5  # RoBERTa-base's layer_norm_eps, the authors' CLAP text tower


def relative_l2(ours: torch.Tensor, reference: torch.Tensor) -> float:
    ours, reference = ours.detach().double().flatten(), reference.detach().double().flatten()
    return ((ours - reference).norm() / reference.norm()).item()


def errors(latents, waveform, run) -> str:
    samples = waveform.shape[-1]
    authors_waveform = run["waveform"].reshape(-1)[:samples]
    return (f"latents {relative_l2(latents, run['latents']):.2e}   "
            f"waveform {relative_l2(waveform.reshape(-1), authors_waveform):.2e}")


def call_arguments(run):
    return dict(prompt=run["prompt"], num_inference_steps=run["steps"], guidance_scale=run["guidance_scale"],
                eta=run["ddim_eta"], latents=run["x_T"].clone())


def audio_length(run, sampling_rate: int) -> float:
    """10.24 s for every reference: the mel frames the authors' VAE decoded, at the vocoder's hop."""
    frames = run["mel"].shape[-2]
    hop = {16000: 160, 48000: 480}[sampling_rate]
    return frames * hop / sampling_rate


def generate_with_final_latents(pipe, arguments, output_type):
    """One call; the latents after the last step come from the step callback (both pipelines have diffusers')."""
    steps = []
    audio = pipe(**arguments, output_type=output_type, callback=lambda i, t, latents: steps.append(latents.clone()),
                 callback_steps=1).audios
    return steps[-1], torch.as_tensor(audio)


# ---------------------------------------------------------------------------------------------------------
# Ours.

def run_ours(folder: Path, run, sampling_rate: int, reference: str | None):
    from audioldm2_lite import AudioLDM2Pipeline

    load_kwargs, call_kwargs = {}, {}
    if reference is not None:
        if "reference" in inspect.signature(AudioLDM2Pipeline.from_pretrained).parameters:
            load_kwargs["reference"] = reference
        elif "reference" in inspect.signature(AudioLDM2Pipeline.__call__).parameters:
            call_kwargs["reference"] = reference
    pipe = AudioLDM2Pipeline.from_pretrained(str(folder), dtype=torch.float32, **load_kwargs)
    arguments = dict(call_arguments(run), audio_length_in_s=audio_length(run, sampling_rate), scheduler="ddim",
                     **call_kwargs)
    latents, waveform = generate_with_final_latents(pipe, arguments, output_type="pt")
    passed = load_kwargs or call_kwargs
    return latents, waveform, (f"reference={reference!r}" if passed else "reference= not accepted: default")


# ---------------------------------------------------------------------------------------------------------
# Diffusers, as it is and as the authors' model.

def diffusers_pipeline(folder: Path, authors_heads: bool, authors_eps: bool):
    """diffusers' AudioLDM2Pipeline on the folder (GPT-2 as GPT2LMHeadModel: see tests/reference.py)."""
    from diffusers import AudioLDM2Pipeline, AudioLDM2UNet2DConditionModel
    from transformers import ClapConfig, ClapModel, GPT2LMHeadModel

    components = {"language_model": GPT2LMHeadModel.from_pretrained(folder / "language_model", dtype=torch.float32)}
    if authors_heads:
        unet_config = AudioLDM2UNet2DConditionModel.load_config(folder / "unet")
        heads = [channels // AUTHORS_HEAD_CHANNELS for channels in unet_config["block_out_channels"]]
        components["unet"] = AudioLDM2UNet2DConditionModel.from_pretrained(
            folder / "unet", attention_head_dim=heads, torch_dtype=torch.float32)
    if authors_eps:
        clap_config = ClapConfig.from_pretrained(folder / "text_encoder")
        clap_config.text_config.layer_norm_eps = AUTHORS_CLAP_TEXT_EPS
        components["text_encoder"] = ClapModel.from_pretrained(
            folder / "text_encoder", config=clap_config, dtype=torch.float32)
    return AudioLDM2Pipeline.from_pretrained(str(folder), torch_dtype=torch.float32, **components)


@torch.no_grad()
def authors_unconditional(pipe, prompt: str):
    """The prompt's embeddings and the authors' unconditional ones, in diffusers' argument names."""
    prompt_embeds, attention_mask, generated = pipe.encode_prompt(
        prompt, device="cpu", num_waveforms_per_prompt=1, do_classifier_free_guidance=False)
    length = prompt_embeds.shape[1]
    tokens = pipe.tokenizer_2("", padding="max_length", max_length=length, truncation=True, return_tensors="pt")
    empty = pipe.text_encoder_2(tokens.input_ids, attention_mask=tokens.attention_mask)[0]
    return dict(prompt_embeds=prompt_embeds, attention_mask=attention_mask, generated_prompt_embeds=generated,
                negative_prompt_embeds=empty, negative_attention_mask=tokens.attention_mask,
                negative_generated_prompt_embeds=torch.zeros_like(generated))


def run_diffusers(pipe, run, sampling_rate: int, authors_uncond: bool):
    arguments = dict(call_arguments(run), audio_length_in_s=audio_length(run, sampling_rate))
    if authors_uncond and run["guidance_scale"] > 1:
        arguments.update(authors_unconditional(pipe, arguments.pop("prompt")))
    return generate_with_final_latents(pipe, arguments, output_type="np")


@torch.no_grad()
def conditioning_errors(pipe, run) -> str:
    """The text stages against the authors' intermediates: CLAP embedding, T5 states, GPT-2's generated states."""
    import torch.nn.functional as F

    conditions = run["conditions"]
    if "film_clap_cond1" not in conditions:
        return ""
    tokens = pipe.tokenizer(run["prompt"], padding="max_length", max_length=pipe.tokenizer.model_max_length,
                            truncation=True, return_tensors="pt")
    clap = pipe.text_encoder.get_text_features(tokens.input_ids, attention_mask=tokens.attention_mask)
    clap = F.normalize(getattr(clap, "pooler_output", clap), dim=-1)  # transformers 5 returns a model output
    t5, _, generated = pipe.encode_prompt(run["prompt"], device="cpu", num_waveforms_per_prompt=1,
                                          do_classifier_free_guidance=False)
    return (f"CLAP {relative_l2(clap, conditions['film_clap_cond1']):.2e}   "
            f"T5 {relative_l2(t5, conditions['crossattn_flan_t5'][0]):.2e}   "
            f"GPT-2 {relative_l2(generated, conditions['crossattn_audiomae_generated'][0]):.2e}")


DIFFUSERS_VARIANTS = {  # name: (heads of 32 channels, CLAP eps 1e-5, the authors' unconditional branch)
    "diffusers as it is": (False, False, False),
    "diffusers + heads only": (True, False, False),
    "diffusers + unconditional only": (False, False, True),
    "diffusers + heads + unconditional": (True, False, True),
    "diffusers as the authors' model": (True, True, True),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("reference_dir", type=Path)
    parser.add_argument("--reference", choices=("authors", "diffusers"), default=None,
                        help="passed to our pipeline as reference= where it takes it")
    parser.add_argument("--skip-diffusers", action="store_true")
    parser.add_argument("--skip-ours", action="store_true")
    parser.add_argument("--guidance", type=float, action="append", help="only the runs of these guidance scales")
    parser.add_argument("--only", choices=list(DIFFUSERS_VARIANTS), action="append",
                        help="run only these diffusers variants (repeatable)")
    args = parser.parse_args()

    reference = torch.load(args.reference_dir / "reference.pt", weights_only=False)
    folder = args.reference_dir / "hub_layout"
    rate = reference["sampling_rate"]
    print(f"{reference['model']} ({reference['size']}), reference run of the authors' code: {args.reference_dir}")
    for key, run in reference["runs"].items():
        if args.guidance and run["guidance_scale"] not in args.guidance:
            continue
        print(f"\n{run['steps']} DDIM steps, eta {run['ddim_eta']}, guidance {run['guidance_scale']}, "
              f"prompt {run['prompt']!r}; relative L2 vs the authors':")
        if not args.skip_ours:
            latents, waveform, how = run_ours(folder, run, rate, args.reference)
            print(f"  {'ours (' + how + ')':45s} {errors(latents, waveform, run)}")
        if args.skip_diffusers:
            continue
        for name, (heads, eps, uncond) in DIFFUSERS_VARIANTS.items():
            if args.only and name not in args.only:
                continue
            if uncond and run["guidance_scale"] == 1 and name != "diffusers as the authors' model":
                continue  # no unconditional branch at guidance 1: these repeat a variant without it
            pipe = diffusers_pipeline(folder, heads, eps)
            if key == next(iter(reference["runs"])) and (heads, uncond) == (False, False) or eps:
                print(f"  {name + ': text stages':45s} {conditioning_errors(pipe, run)}")
            latents, waveform = run_diffusers(pipe, run, rate, uncond)
            print(f"  {name:45s} {errors(latents, waveform, run)}")


if __name__ == "__main__":
    main()
