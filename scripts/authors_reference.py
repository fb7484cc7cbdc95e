"""Reference runs of the authors' own AudioLDM 2 code, offline, on random weights.

Runs INSIDE the separate venv made by scripts/authors_env.sh (the authors' package `audioldm2==0.1.0` pins
transformers 4.30.2 and numpy <= 1.23.5, which cannot share a venv with this project). For one of the authors'
models it:

1. writes local random-weight stand-ins for the hub names the authors' code loads by name (`roberta-base`,
   `google/flan-t5-large`, `gpt2`) and the one diffusers' conversion script loads (`laion/clap-htsat-unfused`):
   configs of the real models (or tiny ones for `--size tiny`), and small tokenizers trained here;
2. builds the authors' `LatentDiffusion` from their config (`audioldm2/utils.py`) with seeded random weights and
   saves it as their training code does: `torch.save({"state_dict": model.state_dict()}, "<name>.pth")`;
3. generates with the authors' own methods (`get_input`, `get_unconditional_condition`, `sample_log` = their
   DDIMSampler, `decode_first_stage`, `mel_spectrogram_to_waveform`) from a fixed starting noise, 4 DDIM steps,
   eta 0, guidance 3.5 and 1.0, and saves the run with per-stage intermediates to `reference.pt`.

Usage (cwd anywhere; the script changes into `<out>/hub` itself, which is where transformers finds the names):
    /work/authors-env/bin/python scripts/authors_reference.py --model audioldm2-full --size tiny \
        --out /work/authors-refs/audioldm2-full-tiny

What differs from the authors' `text_to_audio`, and why:
- `generate_batch` asserts `x_T is None`; the same steps are called here one by one so a fixed x_T can be given.
- DDIM eta 0 (theirs 1.0) and one candidate (theirs 3, ranked by CLAP): deterministic, comparable runs.
- The CLAP conditioner's `unconditional_prob` (0.1 by default, also at inference) is set to 0.
- For `audioldm_48k` and `audioldm_16k_crossattn_t5` the config is the one of their commit 8559ad36, which
  deletes the `/mnt/...` `pretrained_path` / `reload_from_ckpt` entries that 0.1.0 cannot build with.
- Frozen pretrained models that the authors' model holds twice (the CLAP for conditioning and the CLAP for
  ranking; the T5 feeding GPT-2 and the T5 feeding the UNet) were the same pretrained weights in the official
  files. Random init would make them differ, so the copies are tied to one set of weights here.
- Layers the authors zero-initialise get PyTorch's default init and every 1-D parameter is moved off its
  init (`move_off_init`): a freshly initialised UNet outputs exactly 0.
- `--size tiny` shrinks the UNet and VAE widths, the text encoders' depths and the HiFi-GAN's width; every
  width the authors' code hard-codes (GPT-2 768, RoBERTa 768 into CLAP's projection, CLAP's 512 joint space,
  T5 1024 in the config's context dims) is kept, so nothing but sizes differs from the official model.
"""

import argparse
import copy
import json
import os
import sys
import tempfile
from pathlib import Path

import torch

PROMPT = "A hammer is hitting a wooden surface"
STEPS = 4
GUIDANCE_SCALES = (3.5, 1.0)
SCALE_FACTOR = 0.5  # the authors' VAE scale (1 / std of training latents); official files hold values near 0.4-0.6
MODELS = ("audioldm2-full", "audioldm_48k", "audioldm_16k_crossattn_t5")

# Words the tokenizers are trained on: the prompt's words and common English, so every prompt used in the
# comparison tokenizes into known pieces in both the authors' tokenizers and the converted hub folder.
CORPUS = """\
A hammer is hitting a wooden surface
The sound of a dog barking in the distance while rain falls on a metal roof
Birds are singing in the morning and a car passes by on a wet road
A man is speaking and a woman laughs, then music with a piano and drums plays
Techno music with a strong beat, an electric guitar, a violin, wind and water
Footsteps on gravel, a door closes, a bell rings, people clap and cheer loudly
"""


# ---------------------------------------------------------------------------------------------------------
# Configs of the real models the authors' code loads by name (written out; no hub access here).
# roberta-base: its published config.json; flan-t5-large and gpt2: the cvssp/audioldm2 hub configs (which are
# those models' configs); laion/clap-htsat-unfused: the cvssp/audioldm2 text_encoder config (the conversion
# script copies laion's config into it and only overrides the audio tower).

ROBERTA_BASE = dict(
    architectures=["RobertaForMaskedLM"], attention_probs_dropout_prob=0.1, bos_token_id=0, eos_token_id=2,
    hidden_act="gelu", hidden_dropout_prob=0.1, hidden_size=768, initializer_range=0.02, intermediate_size=3072,
    layer_norm_eps=1e-05, max_position_embeddings=514, model_type="roberta", num_attention_heads=12,
    num_hidden_layers=12, pad_token_id=1, type_vocab_size=1, vocab_size=50265,
)
FLAN_T5_LARGE = dict(
    architectures=["T5ForConditionalGeneration"], d_ff=2816, d_kv=64, d_model=1024, decoder_start_token_id=0,
    dense_act_fn="gelu_new", dropout_rate=0.1, eos_token_id=1, feed_forward_proj="gated-gelu",
    initializer_factor=1.0, is_encoder_decoder=True, is_gated_act=True, layer_norm_epsilon=1e-06,
    model_type="t5", n_positions=512, num_decoder_layers=24, num_heads=16, num_layers=24, pad_token_id=0,
    relative_attention_max_distance=128, relative_attention_num_buckets=32, tie_word_embeddings=False,
    vocab_size=32128,
)
GPT2 = dict(
    activation_function="gelu_new", architectures=["GPT2LMHeadModel"], attn_pdrop=0.1, bos_token_id=50256,
    embd_pdrop=0.1, eos_token_id=50256, initializer_range=0.02, layer_norm_epsilon=1e-05, model_type="gpt2",
    n_ctx=1024, n_embd=768, n_head=12, n_inner=None, n_layer=12, n_positions=1024, resid_pdrop=0.1,
    scale_attn_weights=True, vocab_size=50257,
)
# The CLAP config diffusers' script reads from laion/clap-htsat-unfused. Its text config leaves layer_norm_eps
# unset (so transformers' ClapTextConfig default 1e-12 applies), as the hub's does.
CLAP_HTSAT_UNFUSED = dict(
    architectures=["ClapModel"], hidden_size=768, initializer_factor=1.0,
    logit_scale_init_value=14.285714285714285, model_type="clap", num_hidden_layers=16, projection_dim=512,
    projection_hidden_act="relu",
    text_config=dict(classifier_dropout=None, fusion_hidden_size=768, fusion_num_hidden_layers=2,
                     initializer_range=0.02, model_type="clap_text_model", projection_hidden_size=768),
    audio_config=dict(depths=[2, 2, 12, 2], fusion_num_hidden_layers=2, hidden_size=1024,
                      model_type="clap_audio_model", patch_embeds_hidden_size=128, projection_hidden_size=768),
)
CLAP_FEATURE_EXTRACTOR = dict(
    chunk_length_s=10, feature_extractor_type="ClapFeatureExtractor", feature_size=64, fft_window_size=1024,
    frequency_max=14000, frequency_min=50, hop_length=480, max_length_s=10, n_fft=1024, nb_frequency_bins=513,
    nb_max_frames=1000, nb_max_samples=480000, padding="repeatpad", padding_side="right", padding_value=0.0,
    processor_class="ClapProcessor", return_attention_mask=False, sampling_rate=48000, top_db=None,
    truncation="rand_trunc",
)

# Tiny: fewer layers and narrower feed-forwards; the widths the authors' code hard-codes stay.
TINY_TEXT_MODELS = dict(
    roberta=dict(num_hidden_layers=2, intermediate_size=256),
    t5=dict(num_layers=2, num_decoder_layers=2, d_ff=256),
    gpt2=dict(n_layer=2),
)
TINY_UNET = dict(model_channels=32)  # channel_mult [1, 2, 3, 5] -> 32/64/96/160 channels: 1/2/3/5 heads of 32
TINY_VAE = dict(ch=32)  # GroupNorm(32) needs multiples of 32
TINY_VOCODER_WIDTH = 64  # upsample_initial_channel (1024 for 16 kHz, 1536 for 48 kHz)


def write_json(path: Path, data: dict):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def build_roberta_tokenizer(folders):
    """Byte-level BPE trained on CORPUS with RoBERTa's special tokens at RoBERTa's ids (<s> 0, <pad> 1, </s> 2)."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaTokenizer

    bpe = ByteLevelBPETokenizer()
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    bpe.train_from_iterator(CORPUS.splitlines(), vocab_size=400, min_frequency=1, special_tokens=specials)
    with tempfile.TemporaryDirectory() as tmp:
        bpe.save_model(tmp)
        tokenizer = RobertaTokenizer(vocab_file=f"{tmp}/vocab.json", merges_file=f"{tmp}/merges.txt",
                                     model_max_length=512)
        for folder in folders:
            tokenizer.save_pretrained(folder)
    return len(tokenizer)


def build_t5_tokenizer(folder: Path):
    """A unigram sentencepiece model with T5's ids (<pad> 0, </s> 1, <unk> 2), saved slow + fast."""
    import sentencepiece as spm
    from transformers import T5TokenizerFast

    with tempfile.TemporaryDirectory() as tmp:
        Path(f"{tmp}/corpus.txt").write_text(CORPUS)
        spm.SentencePieceTrainer.train(
            input=f"{tmp}/corpus.txt", model_prefix=f"{tmp}/spiece", vocab_size=80, model_type="unigram",
            pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0, minloglevel=2,
        )
        tokenizer = T5TokenizerFast(vocab_file=f"{tmp}/spiece.model", extra_ids=0, model_max_length=512)
        tokenizer.save_pretrained(folder)
    return len(tokenizer)


def write_hub_folders(hub: Path, size: str):
    """Local folders under the hub names, so transformers finds them (cwd = hub, HF_HUB_OFFLINE=1)."""
    roberta, t5, gpt2, clap = (copy.deepcopy(c) for c in (ROBERTA_BASE, FLAN_T5_LARGE, GPT2, CLAP_HTSAT_UNFUSED))
    if size == "tiny":
        roberta.update(TINY_TEXT_MODELS["roberta"])
        t5.update(TINY_TEXT_MODELS["t5"])
        gpt2.update(TINY_TEXT_MODELS["gpt2"])
    roberta_vocab = build_roberta_tokenizer([hub / "roberta-base", hub / "laion/clap-htsat-unfused"])
    t5_vocab = build_t5_tokenizer(hub / "google/flan-t5-large")
    if size == "tiny":  # the embeddings shrink to the tokenizers' vocabularies
        roberta["vocab_size"] = roberta_vocab
        t5["vocab_size"] = t5_vocab
        gpt2.update(vocab_size=64, bos_token_id=0, eos_token_id=0)  # GPT-2 reads embeddings only: ids unused
    # CLAP's text tower is the authors' RobertaModel(RobertaConfig("roberta-base")): the CLAP config must agree.
    clap["text_config"].update({k: roberta[k] for k in ("vocab_size", "num_hidden_layers", "intermediate_size")})
    write_json(hub / "roberta-base/config.json", roberta)
    write_json(hub / "google/flan-t5-large/config.json", t5)
    write_json(hub / "gpt2/config.json", gpt2)
    write_json(hub / "laion/clap-htsat-unfused/config.json", clap)
    write_json(hub / "laion/clap-htsat-unfused/preprocessor_config.json", CLAP_FEATURE_EXTRACTOR)


# ---------------------------------------------------------------------------------------------------------
# The authors' code.

def import_authors_code():
    """Import the authors' package. Its top-level imports pull torchvision (via timm and ddpm.py) and torchaudio.

    The venv's torch is a CPU build; the torchvision wheel matching it on the package index is a CUDA build
    whose C extension cannot load, and its import then fails registering fake kernels for two operators it
    could not define. Defining the two schemas first lets it import; nothing here runs torchvision's ops.
    """
    for op in ("nms", "qnms"):
        try:
            torch.library.define(f"torchvision::{op}", "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        except RuntimeError:
            pass  # already defined (a working torchvision)
    import audioldm2  # noqa: F401  (loads roberta-base's tokenizer at import: cwd must be the hub folder)
    from audioldm2.latent_diffusion.models.ddpm import LatentDiffusion
    from audioldm2.pipeline import make_batch_for_text_to_audio
    from audioldm2.utils import default_audioldm_config
    import audioldm2.utilities.model as authors_model_utils

    return LatentDiffusion, make_batch_for_text_to_audio, default_audioldm_config, authors_model_utils


def drop_mnt_paths(node):
    """The config of the authors' commit 8559ad36: delete the entries pointing at their /mnt training files."""
    if isinstance(node, dict):
        for key in ("pretrained_path", "reload_from_ckpt", "metadata_root"):
            if isinstance(node.get(key), str) and node[key].startswith("/mnt/"):
                del node[key]
        for value in node.values():
            drop_mnt_paths(value)


def set_in_all(node, target_suffix: str, key: str, value):
    """Set params[key] = value in every sub-config whose target ends with target_suffix."""
    if isinstance(node, dict):
        if str(node.get("target", "")).endswith(target_suffix):
            node.setdefault("params", {})[key] = value
        for child in node.values():
            set_in_all(child, target_suffix, key, value)


def authors_config(model_name: str, size: str, default_audioldm_config):
    config = default_audioldm_config(model_name)
    drop_mnt_paths(config)
    params = config["model"]["params"]
    params["device"] = "cpu"
    set_in_all(config, "CLAPAudioEmbeddingClassifierFreev2", "unconditional_prob", 0.0)
    set_in_all(config, "SequenceGenAudioMAECond", "device", "cpu")
    if size == "tiny":
        params["unet_config"]["params"].update(TINY_UNET)
        params["first_stage_config"]["params"]["ddconfig"].update(TINY_VAE)
    return config


def tiny_vocoder(authors_model_utils):
    """Shrink the HiFi-GAN width the authors hard-code in utilities/model.py (rates and kernels stay)."""
    for name in ("get_vocoder_config", "get_vocoder_config_48k"):
        original = getattr(authors_model_utils, name)

        def smaller(original=original):
            config = original()
            config["upsample_initial_channel"] = TINY_VOCODER_WIDTH
            return config

        setattr(authors_model_utils, name, smaller)


def move_off_init(model, seed: int, scale: float = 0.1):
    """Random weights that exercise every tensor, as scripts/make_tiny_checkpoint.py does for the hub layout.

    The authors' UNet zero-initialises its output convolution, each transformer's proj_out and each ResBlock's
    second convolution (`zero_module`): random init alone gives a UNet whose output is exactly 0, and a run
    that compares nothing. Those layers get PyTorch's default init instead. Every 1-D parameter (norm weights
    and biases, biases) moves by `scale` * N(0, 1) so that a norm or bias applied wrongly shows.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for submodel in (model.model, model.first_stage_model, model.cond_stage_models, model.clap):
            for module in submodel.modules():
                weight = getattr(module, "weight", None)
                if isinstance(module, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Linear)) and not weight.any():
                    module.reset_parameters()
            for parameter in submodel.parameters():
                if parameter.ndim == 1:
                    parameter.add_(scale * torch.randn(parameter.shape, generator=generator))
        # The UNet's EMA copy (model_ema, which text_to_audio does not use) was taken at construction: refresh it.
        if getattr(model, "use_ema", False):
            for name, parameter in model.model.named_parameters():
                getattr(model.model_ema, model.model_ema.m_name2s_name[name]).copy_(parameter)


def tie_duplicate_pretrained_models(model):
    """The official files hold one pretrained CLAP twice and one T5 twice; give the random copies one weight set."""
    tied = []
    conditioners = model.cond_stage_models
    for module in conditioners:
        for inner in getattr(module, "cond_stage_models", []):
            if type(inner).__name__ == "CLAPAudioEmbeddingClassifierFreev2":
                model.clap.model.load_state_dict(inner.model.state_dict())
                tied.append("clap.model <- conditioning CLAP")
            if type(inner).__name__ == "FlanT5HiddenState":
                top = [m for m in conditioners if type(m).__name__ == "FlanT5HiddenState"]
                if top:
                    inner.model.load_state_dict(top[0].model.state_dict())
                    tied.append("GPT-2's input T5 <- the UNet's T5")
    for module in conditioners:  # audioldm_48k: the CLAP conditioner is top level
        if type(module).__name__ == "CLAPAudioEmbeddingClassifierFreev2":
            model.clap.model.load_state_dict(module.model.state_dict())
            tied.append("clap.model <- conditioning CLAP")
    return tied


def to_saveable(value):
    """Tensors, and lists/dicts/tuples of them, detached to CPU float32 copies; other values dropped to None."""
    if torch.is_tensor(value):
        return value.detach().cpu().clone()
    if isinstance(value, (list, tuple)):
        return [to_saveable(v) for v in value]
    if isinstance(value, dict):
        return {k: to_saveable(v) for k, v in value.items()}
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    return None


class FirstUNetCalls:
    """Records the inputs and outputs of the first `count` calls of the authors' UNet (diffusion_model)."""

    def __init__(self, unet, count: int):
        self.calls = []
        self.count = count
        self.handle = unet.register_forward_hook(self.record, with_kwargs=True)

    def record(self, module, args, kwargs, output):
        if len(self.calls) < self.count:
            self.calls.append({"args": to_saveable(args), "kwargs": to_saveable(kwargs), "output": to_saveable(output)})

    def remove(self):
        self.handle.remove()


@torch.no_grad()
def generate(model, make_batch, x_T, guidance_scale: float, latent_t_size: int):
    """The authors' LatentDiffusion.generate_batch, step by step, with a given x_T (theirs asserts x_T is None)."""
    batch = make_batch(PROMPT, batchsize=1)
    model.latent_t_size = latent_t_size
    z, cond_all = model.get_input(batch, model.first_stage_key, unconditional_prob_cfg=0.0)
    cond_all_saved = to_saveable(cond_all)
    cond = model.filter_useful_cond_dict(cond_all)
    unconditional = None
    if guidance_scale != 1.0:
        unconditional = {}
        for key in model.cond_stage_model_metadata:
            index = model.cond_stage_model_metadata[key]["model_idx"]
            unconditional[key] = model.cond_stage_models[index].get_unconditional_condition(1)
    recorder = FirstUNetCalls(model.model.diffusion_model, count=1 if unconditional is None else 2)
    latents, _ = model.sample_log(
        cond=cond, batch_size=1, x_T=x_T.clone(), ddim=True, ddim_steps=STEPS, eta=0.0,
        unconditional_guidance_scale=guidance_scale, unconditional_conditioning=unconditional,
    )
    recorder.remove()
    mel = model.decode_first_stage(latents)
    waveform = model.mel_spectrogram_to_waveform(mel, savepath="", bs=None, name=["ref"], save=False)
    return {
        "prompt": PROMPT,
        "steps": STEPS,
        "guidance_scale": guidance_scale,
        "ddim_eta": 0.0,
        "x_T": x_T.clone(),
        "latents": latents.detach().clone(),  # before the VAE, in the UNet's scale (decode divides by scale_factor)
        "mel": mel.detach().clone(),  # (1, 1, frames, mel bins), log-mel as the vocoder reads it
        "waveform": torch.from_numpy(waveform).clone(),  # (1, 1, samples): the vocoder's output, untrimmed
        "conditions": cond_all_saved,  # every conditioner's output, before filter_useful_cond_dict
        "conditions_used": to_saveable(cond),
        "unconditional_conditions": to_saveable(unconditional),
        "first_unet_calls": recorder.calls,  # [uncond, cond] at the first step when guided, else [cond]
    }


def write_readme(out: Path, model: str, size: str, seed: int):
    """README.txt of a reference folder: what is in it and the exact commands that made it."""
    repo = Path(__file__).resolve().parent.parent
    convertible = model == "audioldm2-full"  # diffusers' script converts the AudioLDM 2 family only
    lines = [
        f"Reference run of the authors' AudioLDM 2 code (audioldm2==0.1.0): {model}, {size} size, seed {seed}.",
        "Random weights; nothing here is a trained model.",
        "",
        "Files:",
        f"  {model}.pth          the authors' LatentDiffusion, saved as their training code saves: {{'state_dict': ...}}",
        "  authors_config.json   the config it was built from (audioldm2/utils.py, with the changes listed in",
        "                        scripts/authors_reference.py's docstring: 8559ad36 paths, CLAP text dropout 0, tiny sizes)",
        "  hub/                  random-weight stand-ins for roberta-base, google/flan-t5-large, gpt2,",
        "                        laion/clap-htsat-unfused (configs + locally trained tokenizers); the cwd of both runs",
        "  reference.pt          torch.load -> dict: model, size, seed, sampling_rate, scale_factor, tied_copies, runs;",
        "                        runs['guidance_3.5'|'guidance_1.0'] -> prompt, steps (4), guidance_scale, ddim_eta (0),",
        "                        x_T, latents (before the VAE), mel, waveform (untrimmed vocoder output),",
        "                        conditions (every conditioner's output: CLAP text embedding 'film_clap_cond1',",
        "                        T5 states+mask 'crossattn_flan_t5', GPT-2's 8 generated states+mask",
        "                        'crossattn_audiomae_generated'), conditions_used, unconditional_conditions,",
        "                        first_unet_calls (inputs and output of the UNet's first call(s): [uncond, cond])",
    ]
    if convertible:
        lines += ["  hub_layout/           the .pth converted by diffusers' scripts/convert_original_audioldm2_to_diffusers.py"]
    lines += [
        "",
        "Made with (from the repository root of the authors-harness branch):",
        "  bash scripts/authors_env.sh /work/authors-env",
        f"  OMP_NUM_THREADS=1 /work/authors-env/bin/python scripts/authors_reference.py --model {model} --size {size} "
        f"--seed {seed} --out {out}",
    ]
    if convertible:
        lines += [
            "  # diffusers' script, from a checkout of huggingface/diffusers (not in the installed package; used: 58eb52c0):",
            "  git -C <diffusers checkout> show HEAD:scripts/convert_original_audioldm2_to_diffusers.py \\",
            f"      > {out.parent}/convert_original_audioldm2_to_diffusers.py",
            f"  /work/main/.venv/bin/python scripts/authors_convert.py {out} \\",
            f"      --diffusers-script {out.parent}/convert_original_audioldm2_to_diffusers.py",
            f"  /work/main/.venv/bin/python scripts/compare_with_authors.py {out} [--reference authors]",
        ]
    else:
        lines += ["  (diffusers' script cannot convert this model: no hub_layout/ here)"]
    lines += ["", f"Scripts: {repo}/scripts/authors_env.sh, authors_reference.py, authors_convert.py, compare_with_authors.py"]
    (out / "README.txt").write_text("\n".join(lines) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=MODELS, default="audioldm2-full")
    parser.add_argument("--size", choices=("tiny", "full"), default="tiny")
    parser.add_argument("--out", required=True, help="output folder, e.g. /work/authors-refs/audioldm2-full-tiny")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--readme-only", action="store_true", help="only (re)write <out>/README.txt")
    args = parser.parse_args()
    if args.readme_only:
        return write_readme(Path(args.out).resolve(), args.model, args.size, args.seed)

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    out = Path(args.out).resolve()
    hub = out / "hub"
    hub.mkdir(parents=True, exist_ok=True)
    write_hub_folders(hub, args.size)
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.chdir(hub)

    LatentDiffusion, make_batch, default_audioldm_config, authors_model_utils = import_authors_code()
    if args.size == "tiny":
        tiny_vocoder(authors_model_utils)
    config = authors_config(args.model, args.size, default_audioldm_config)
    write_json(out / "authors_config.json", config)

    torch.manual_seed(args.seed)
    model = LatentDiffusion(**config["model"]["params"])
    move_off_init(model, seed=args.seed + 2)
    tied = tie_duplicate_pretrained_models(model)
    model.scale_factor.fill_(SCALE_FACTOR)
    model.eval()
    checkpoint = out / f"{args.model}.pth"
    torch.save({"state_dict": model.state_dict()}, checkpoint)
    print(f"saved {checkpoint} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters); tied: {tied}")

    params = config["model"]["params"]
    # 10.24 s: 1024 mel frames; the VAE halves time (len(ch_mult) - 1) times.
    latent_t_size = 1024 // 2 ** (len(params["first_stage_config"]["params"]["ddconfig"]["ch_mult"]) - 1)
    shape = (1, params["channels"], latent_t_size, params["latent_f_size"])
    x_T = torch.randn(shape, generator=torch.Generator().manual_seed(args.seed + 1))
    runs = {}
    for guidance_scale in GUIDANCE_SCALES:
        runs[f"guidance_{guidance_scale}"] = generate(model, make_batch, x_T, guidance_scale, latent_t_size)
        print(f"guidance {guidance_scale}: latents {tuple(runs[f'guidance_{guidance_scale}']['latents'].shape)}, "
              f"waveform {tuple(runs[f'guidance_{guidance_scale}']['waveform'].shape)}")
    reference = {
        "model": args.model,
        "size": args.size,
        "seed": args.seed,
        "sampling_rate": params["sampling_rate"],
        "scale_factor": SCALE_FACTOR,
        "tied_copies": tied,
        "runs": runs,
    }
    torch.save(reference, out / "reference.pt")
    write_readme(out, args.model, args.size, args.seed)
    print(f"saved {out / 'reference.pt'}")


if __name__ == "__main__":
    sys.exit(main())
