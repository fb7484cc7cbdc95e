"""Build a tiny random AudioLDM 2 *text-to-speech* checkpoint in hub layout, offline, in seconds.

    python scripts/make_tiny_speech_checkpoint.py OUT_DIR [--seed 0]

The layout of `anhnct/audioldm2_gigaspeech`: the tiny text-to-audio checkpoint (make_tiny_checkpoint.py)
with the components the speech checkpoints change replaced:
- `text_encoder_2`: a transformers `VitsModel` (only its text encoder is read) with the real 183-symbol
  vocabulary, so the pipeline's end token 182 exists;
- `tokenizer_2`: a `VitsTokenizer` over the VITS symbol table (pad "_" = 0, punctuation, letters, IPA),
  with phonemisation off so no espeak-ng is needed (a test switches it on), padding to 32 slots;
- `projection_model`: with the learned position embedding over those 32 VITS slots;
- `language_model`: GPT-2 with room for 512 generated states and `max_new_tokens` 512;
- `unet`: GPT-2's states are its only cross-attended sequence (the original speech UNet's
  `context_dim` is [768]), so the VITS states are not read by it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from make_tiny_checkpoint import make_tiny_checkpoint, perturb_vectors

TINY_VITS_MAX_LENGTH = 32  # the speech checkpoints pad phonemes to 310 slots (the original's pad_length)
SPEECH_MAX_NEW_TOKENS = 512  # the original speech config's `sequence_gen_length`

# The VITS symbol table (Kim et al.'s text/symbols.py): pad, punctuation, Latin letters, IPA letters.
VITS_SYMBOLS = (
    ["_"] + list(';:,.!?¡¿—…"«»“” ')
    + list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
    + list("ɑɐɒæɓʙβɔɕçɗɖðʤəɘɚɛɜɝɞɟʄɡɠɢʛɦɧħɥʜɨɪʝɭɬɫɮʟɱɯɰŋɳɲɴøɵɸθœɶʘɹɺɾɻʀʁɽʂʃʈʧʉʊʋⱱʌɣɤʍχʎʏʑʐʒʔʡʕʢǀǁǂǃˈˌːˑʼʴʰʱʲʷˠˤ˞↓↑→↗↘'̩'ᵻ")
)


def build_vits_tokenizer(out: Path, model_max_length: int, phonemize: bool = False):
    """A VitsTokenizer over VITS_SYMBOLS (one id per symbol, '<unk>' last), saved in `out`."""
    from transformers import VitsTokenizer

    vocab = {symbol: i for i, symbol in enumerate(dict.fromkeys(VITS_SYMBOLS))}
    vocab["<unk>"] = len(vocab)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
        tokenizer = VitsTokenizer(
            f"{tmp}/vocab.json", pad_token="_", unk_token="<unk>", add_blank=False, normalize=True,
            phonemize=phonemize, model_max_length=model_max_length,
        )
        tokenizer.save_pretrained(out)
    return tokenizer


def replace_component(out: Path, name: str, model, hub_class: tuple[str, str]) -> None:
    shutil.rmtree(out / name)
    if hasattr(model, "save_pretrained"):
        model.save_pretrained(out / name, safe_serialization=True)
    index = json.loads((out / "model_index.json").read_text())
    index[name] = list(hub_class)
    (out / "model_index.json").write_text(json.dumps(index, indent=2))


def make_tiny_speech_checkpoint(out_dir: str | Path, seed: int = 0) -> Path:
    import torch
    from diffusers.pipelines.audioldm2 import AudioLDM2ProjectionModel, AudioLDM2UNet2DConditionModel
    from transformers import GPT2Config, GPT2Model, VitsConfig, VitsModel

    out = make_tiny_checkpoint(out_dir, seed)
    unet_config = json.loads((out / "unet" / "config.json").read_text())
    torch.manual_seed(seed + 1)

    replace_component(out, "tokenizer_2", None, ("transformers", "VitsTokenizer"))
    build_vits_tokenizer(out / "tokenizer_2", TINY_VITS_MAX_LENGTH)
    vits = VitsModel(VitsConfig(
        vocab_size=183, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, ffn_dim=20, window_size=2,
        flow_size=8, spectrogram_bins=9, upsample_initial_channel=8, upsample_rates=[2, 2],
        upsample_kernel_sizes=[4, 4], resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1]],
        prior_encoder_num_wavenet_layers=1, posterior_encoder_num_wavenet_layers=1,
        duration_predictor_filter_channels=8, duration_predictor_num_flows=1,
    ))
    projection = AudioLDM2ProjectionModel(
        text_encoder_dim=16, text_encoder_1_dim=16, langauge_model_dim=24, use_learned_position_embedding=True,
        max_seq_length=TINY_VITS_MAX_LENGTH,
    )
    gpt2_config = GPT2Config(n_embd=24, n_layer=2, n_head=4, n_positions=TINY_VITS_MAX_LENGTH + 5 + SPEECH_MAX_NEW_TOKENS,
                             vocab_size=50, bos_token_id=0, eos_token_id=0)
    gpt2 = GPT2Model(gpt2_config)
    unet_config.update(cross_attention_dim=[[None, 24]] * 4)  # GPT-2's states only
    unet = AudioLDM2UNet2DConditionModel.from_config({k: v for k, v in unet_config.items() if not k.startswith("_")})
    for model in (vits, projection, gpt2, unet):
        perturb_vectors(model)
    with torch.no_grad():  # zero-initialised: give the learned positions values, so parity checks they are added
        projection.learnable_positional_embedding.normal_()

    replace_component(out, "text_encoder_2", vits, ("transformers", "VitsModel"))
    replace_component(out, "projection_model", projection, ("audioldm2", "AudioLDM2ProjectionModel"))
    replace_component(out, "language_model", gpt2, ("transformers", "GPT2Model"))
    saved = json.loads((out / "language_model" / "config.json").read_text())
    saved["max_new_tokens"] = SPEECH_MAX_NEW_TOKENS  # an AudioLDM 2 field that save_pretrained does not write
    (out / "language_model" / "config.json").write_text(json.dumps(saved, indent=2))
    replace_component(out, "unet", unet, ("audioldm2", "AudioLDM2UNet2DConditionModel"))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(make_tiny_speech_checkpoint(args.out_dir, args.seed))


if __name__ == "__main__":
    main()
