"""Build a tiny random AudioLDM 2 checkpoint in hub layout, offline, in seconds.

    python scripts/make_tiny_checkpoint.py OUT_DIR [--seed 0] [--fusion-features]

Every component is made with diffusers / transformers `save_pretrained`, so the folder is exactly what
`AudioLDM2Pipeline.from_pretrained` reads. The two tokenizers are trained here on a small built-in
corpus (a byte-level BPE for CLAP's RoBERTa, a unigram sentencepiece model for Flan-T5): no network.
The sizes are tiny but keep every structural feature of the official checkpoints (four UNet levels with
[self, GPT-2, T5] attention, three VAE levels, a five-stage HiFi-GAN with a 160x hop, an HTSAT audio
branch) so that parity on it exercises the same code paths. `make_random_checkpoint.py` reuses the
tokenizer builders below for the full-size checkpoint.

`--fusion-features` gives CLAP the audio front end of diffusers' and transformers' own small test
checkpoints: a feature extractor with `truncation="fusion"` (four log-mels stacked per clip) and an HTSAT
that reads them as four input channels (`patch_embed_input_channels=4`, fusion itself off).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

CORPUS = """
A dog barks in the distance while rain falls on a tin roof.
Techno music with a strong bass line and a fast hi-hat pattern.
A man speaks in a calm voice, then a door closes and footsteps fade away.
Birds chirping in a forest at dawn with a gentle wind through the leaves.
The sound of a hammer hitting a nail, followed by a saw cutting wood.
A string quartet plays a slow, melancholic piece in a minor key.
Heavy traffic on a busy street with car horns and a siren passing by.
Ocean waves crash on the shore; seagulls call overhead.
A crowd cheers and applauds at the end of a concert.
An old clock ticks loudly in a quiet room. A cat meows twice.
Piano and violin, happy and upbeat, with hand claps and a kick drum.
Thunder rumbles, a baby cries, and water drips from a faucet.
""".strip()

# The tiny sizes, shared with the tests so they can reason about them.
TINY_CLAP_MAX_LENGTH = 40  # the official CLAP tokenizer pads to 512
TINY_T5_MAX_LENGTH = 24  # the official T5 tokenizer truncates at 128


def build_roberta_tokenizer(out: Path, model_max_length: int, corpus: str = CORPUS):
    """A byte-level BPE trained on `corpus`, saved as a RobertaTokenizerFast (CLAP's tokenizer class)."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaTokenizerFast

    bpe = ByteLevelBPETokenizer()
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # RoBERTa's ids 0..4
    bpe.train_from_iterator(corpus.splitlines(), vocab_size=400, min_frequency=1, special_tokens=specials)
    with tempfile.TemporaryDirectory() as tmp:
        bpe.save_model(tmp)
        vocab = json.loads(Path(f"{tmp}/vocab.json").read_text())
        merges = [tuple(line.split()) for line in Path(f"{tmp}/merges.txt").read_text().splitlines()[1:] if line]
    tokenizer = RobertaTokenizerFast(vocab=vocab, merges=merges, model_max_length=model_max_length)
    tokenizer.save_pretrained(out)
    return tokenizer


def build_t5_tokenizer(out: Path, model_max_length: int, corpus: str = CORPUS):
    """A unigram sentencepiece model trained on `corpus`, saved as a T5TokenizerFast."""
    import sentencepiece as spm
    from transformers import T5TokenizerFast

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "corpus.txt").write_text(corpus)
        spm.SentencePieceTrainer.train(
            input=f"{tmp}/corpus.txt", model_prefix=f"{tmp}/spiece", vocab_size=120, model_type="unigram",
            pad_id=0, eos_id=1, unk_id=2, bos_id=-1,  # T5's special ids
            character_coverage=1.0, minloglevel=2,
        )
        model = spm.SentencePieceProcessor(model_file=f"{tmp}/spiece.model")
    pieces = [(model.id_to_piece(i), model.get_score(i)) for i in range(model.get_piece_size())]
    tokenizer = T5TokenizerFast(vocab=pieces, extra_ids=0, model_max_length=model_max_length)
    tokenizer.save_pretrained(out)
    return tokenizer


def perturb_vectors(model, scale: float = 0.1):
    """Move every tensor that starts constant off its init: norm weights and biases (1 and 0), Swin's
    relative-position bias tables (0) and BatchNorm running statistics (0 and 1).

    Constant tensors would let a parity test pass with a norm weight never applied, a bias never added
    or a position bias looked up wrongly. Random offsets make every tensor count.
    """
    import torch

    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.ndim == 1 or name.endswith("relative_position_bias_table"):
                parameter.add_(scale * torch.randn_like(parameter))
        for name, buffer in model.named_buffers():
            if name.endswith("running_mean"):
                buffer.add_(scale * torch.randn_like(buffer))
            elif name.endswith("running_var"):
                buffer.mul_(1 + scale * torch.rand_like(buffer))
    return model


def make_tiny_checkpoint(out_dir: str | Path, seed: int = 0, fusion_features: bool = False,
                         unet_channels=(16, 16, 24, 32)) -> Path:
    """`unet_channels`: the UNet's level widths; multiples of 32 give the authors' heads of 32 channels a split
    (`reference="authors"`, generation/authors.py)."""
    import torch
    from diffusers import AudioLDM2Pipeline, AutoencoderKL, DDIMScheduler
    from diffusers.pipelines.audioldm2 import AudioLDM2ProjectionModel, AudioLDM2UNet2DConditionModel
    from transformers import (
        ClapConfig, ClapFeatureExtractor, ClapModel, GPT2Config, GPT2Model, SpeechT5HifiGan,
        SpeechT5HifiGanConfig, T5Config, T5EncoderModel,
    )

    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    torch.manual_seed(seed)

    tokenizer = build_roberta_tokenizer(out / "tokenizer", TINY_CLAP_MAX_LENGTH)
    tokenizer_2 = build_t5_tokenizer(out / "tokenizer_2", TINY_T5_MAX_LENGTH)

    clap = ClapModel(ClapConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=37, max_position_embeddings=TINY_CLAP_MAX_LENGTH + 2, projection_dim=16,
        ),
        audio_config=dict(
            spec_size=64, num_mel_bins=16, window_size=4, patch_size=4, patch_stride=[4, 4], depths=[1, 2],
            num_attention_heads=[2, 4], patch_embeds_hidden_size=16, hidden_size=32, projection_dim=16,
            patch_embed_input_channels=4 if fusion_features else 1,
        ),
        projection_dim=16,
    ))
    t5 = T5EncoderModel(T5Config(
        vocab_size=len(tokenizer_2), d_model=32, d_kv=8, d_ff=40, num_layers=2, num_heads=4,
        feed_forward_proj="gated-gelu", relative_attention_num_buckets=8, relative_attention_max_distance=16,
    ))
    projection = AudioLDM2ProjectionModel(text_encoder_dim=16, text_encoder_1_dim=32, langauge_model_dim=24)
    gpt2_config = GPT2Config(n_embd=24, n_layer=2, n_head=4, n_positions=64, vocab_size=50, bos_token_id=0, eos_token_id=0)
    gpt2_config.max_new_tokens = 8  # the official config carries this extra field
    gpt2 = GPT2Model(gpt2_config)
    unet = AudioLDM2UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=2, norm_num_groups=8,
        block_out_channels=tuple(unet_channels), attention_head_dim=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=[[None, 24, 32]] * 4,
    )
    vae = AutoencoderKL(
        in_channels=1, out_channels=1, latent_channels=4, block_out_channels=(8, 16, 16), layers_per_block=1,
        norm_num_groups=4, down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        sample_size=64, scaling_factor=0.4110932946205139,
    )
    vocoder = SpeechT5HifiGan(SpeechT5HifiGanConfig(
        model_in_dim=16, sampling_rate=16000, upsample_initial_channel=64, upsample_rates=[5, 4, 2, 2, 2],
        upsample_kernel_sizes=[10, 8, 4, 4, 4], resblock_kernel_sizes=[3, 7], resblock_dilation_sizes=[[1, 3], [1, 3]],
        normalize_before=True, initializer_range=0.05,  # 0.01 would leave the tiny output near silent
    ))
    with torch.no_grad():  # non-trivial normalisation statistics, so parity checks that they are applied
        vocoder.mean.normal_(0, 0.5)
        vocoder.scale.uniform_(0.5, 1.5)
    for model in (clap, t5, projection, gpt2, unet, vae, vocoder):
        perturb_vectors(model)
    official = Path(__file__).parent / "checkpoint_configs" / "audioldm2"
    scheduler = DDIMScheduler.from_config(json.loads((official / "scheduler" / "scheduler_config.json").read_text()))
    feature_extractor = ClapFeatureExtractor(
        feature_size=16, sampling_rate=48000, hop_length=1920, max_length_s=10, fft_window_size=1024,
        frequency_min=50, frequency_max=14000, truncation="fusion" if fusion_features else "rand_trunc",
        padding="repeatpad",
    )

    # GPT2LMHeadModel is what diffusers needs at run time; the hub layout stores the bare GPT2Model.
    pipe = AudioLDM2Pipeline(
        vae=vae, text_encoder=clap, text_encoder_2=t5, projection_model=projection, language_model=gpt2,
        tokenizer=tokenizer, tokenizer_2=tokenizer_2, feature_extractor=feature_extractor, unet=unet,
        scheduler=scheduler, vocoder=vocoder,
    )
    pipe.save_pretrained(out, safe_serialization=True)
    return out


def main():
    try:
        import diffusers  # noqa: F401
    except ImportError:  # the quick start installs the package alone; the checkpoint is built with the references
        raise SystemExit('make_tiny_checkpoint.py builds the checkpoint with diffusers and transformers, the test '
                         'extra: pip install -e ".[test]"') from None
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fusion-features", action="store_true",
                        help="CLAP reads four stacked log-mels per clip, as in diffusers' test checkpoints")
    parser.add_argument("--unet-channels", type=int, nargs=4, default=(16, 16, 24, 32), metavar="C",
                        help="the UNet's level widths (multiples of 32 for reference='authors')")
    args = parser.parse_args()
    print(make_tiny_checkpoint(args.out_dir, args.seed, args.fusion_features, args.unet_channels))


if __name__ == "__main__":
    main()
