"""Convert one of the authors' checkpoint files (haoheliu/AudioLDM2 format) to a hub-layout folder.

    python scripts/convert_authors_checkpoint.py FILE_OR_NAME OUT_DIR [--text-models DIR]

FILE_OR_NAME is a local `.pth`/`.ckpt` (a dict with `state_dict` in the authors' module names, as their
training code writes it) or one of their models (`haoheliu/audioldm2-full`, `audioldm_48k`, ...), downloaded
into the hub cache. The tokenizers and the text models' configs come from `roberta-base`,
`google/flan-t5-large` and `gpt2` (a folder of that name here, under --text-models, or the hub cache).

- The AudioLDM 2 family (audioldm2-full, -music-665k, -full-large-1150k) gives a folder that diffusers'
  `AudioLDM2Pipeline.from_pretrained` runs, with the UNet as the authors trained it: `attention_head_dim`
  is the list of heads per level (every head 32 channels wide), which diffusers reads per level. CLAP's
  text tower keeps the authors' LayerNorm epsilon (roberta-base's 1e-5). CLAP's audio tower is the file's
  ranking CLAP's (`clap.model.audio_branch`, HTSAT, and `audio_projection`), the tensors diffusers' own
  conversion script takes: candidates are ranked as the authors rank them.
- audioldm_48k and audioldm_16k_crossattn_t5 give a hub-layout folder that audioldm2_lite loads stage by stage;
  diffusers has no pipeline for them. Each component matches a diffusers / transformers class, named in
  model_index.json: the FiLM UNet is diffusers' AudioLDM2UNet2DConditionModel with
  `class_embed_type="simple_projection"` and `class_embeddings_concat=True` (diffusers' AudioLDM-1 UNet
  conditions the same way), the VAE AutoencoderKL, the 48 kHz vocoder SpeechT5HifiGan (its config also names
  the mel front end: n_fft 2048, 20 Hz-24 kHz), CLAP ClapModel, Flan-T5 T5EncoderModel. Both also get the
  ranking CLAP's audio tower in `text_encoder` (the T5-only model's `text_encoder` is that CLAP, text tower included).

The work is `audioldm2_lite.generation.authors_export.write_hub_folder`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def convert_authors_checkpoint(model, out_dir, text_models_dir=None) -> Path:
    from audioldm2_lite.generation.authors_export import write_hub_folder

    return write_hub_folder(model, out_dir, text_models_dir)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="an authors' .pth/.ckpt file, or haoheliu/<name>")
    parser.add_argument("out_dir")
    parser.add_argument("--text-models", help="folder holding roberta-base/, google/flan-t5-large/, gpt2/")
    args = parser.parse_args()
    from audioldm2_lite.models.hub_config import CheckpointError

    try:
        print(convert_authors_checkpoint(args.model, args.out_dir, args.text_models))
    except CheckpointError as error:
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    main()
