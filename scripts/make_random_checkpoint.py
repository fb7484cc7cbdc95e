"""Build a full-size AudioLDM 2 checkpoint with random weights from the official configs, offline.

    python scripts/make_random_checkpoint.py --config-dir scripts/checkpoint_configs/audioldm2 OUT_DIR
        [--components unet vae ...] [--seed 0]

Same tensor names, shapes and file layout as the real cvssp/audioldm2 (-large, -music) on the hub, so
loading, parity and benchmarks run at real size without downloading anything. The text encoder is
stored in float64, as its config's `torch_dtype` says, so the loaders' casting is exercised. The
tokenizers are trained locally (see make_tiny_checkpoint.py) with the official maximum lengths.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from make_tiny_checkpoint import build_roberta_tokenizer, build_t5_tokenizer, perturb_vectors  # noqa: E402
from make_tiny_speech_checkpoint import build_vits_tokenizer  # noqa: E402

ALL_COMPONENTS = (
    "text_encoder", "text_encoder_2", "projection_model", "language_model", "unet", "vae", "vocoder",
    "tokenizer", "tokenizer_2", "scheduler", "feature_extractor",
)


def _build(name: str, src: Path):
    """A random-weight model (or tokenizer-free object) for component `name` from its config folder."""
    from diffusers import AutoencoderKL
    from diffusers.pipelines.audioldm2 import AudioLDM2ProjectionModel, AudioLDM2UNet2DConditionModel
    from transformers import ClapConfig, ClapModel, GPT2Config, GPT2Model, SpeechT5HifiGan, SpeechT5HifiGanConfig
    from transformers import T5Config, T5EncoderModel

    config = json.loads((src / "config.json").read_text())
    if name == "text_encoder":
        return ClapModel(ClapConfig.from_pretrained(src))
    if name == "text_encoder_2" and config.get("model_type") == "vits":  # the text-to-speech checkpoints
        from transformers import VitsConfig, VitsModel

        return VitsModel(VitsConfig.from_pretrained(src))
    if name == "text_encoder_2":
        return T5EncoderModel(T5Config.from_pretrained(src))
    if name == "language_model":
        return GPT2Model(GPT2Config.from_pretrained(src))
    if name == "vocoder":
        return SpeechT5HifiGan(SpeechT5HifiGanConfig.from_pretrained(src))
    cls = {"projection_model": AudioLDM2ProjectionModel, "unet": AudioLDM2UNet2DConditionModel, "vae": AutoencoderKL}
    return cls[name].from_config(config)


def make_random_checkpoint(config_dir: str | Path, out_dir: str | Path, components=ALL_COMPONENTS, seed: int = 0) -> Path:
    import torch
    from transformers import ClapFeatureExtractor

    config_dir, out = Path(config_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(config_dir / "model_index.json", out / "model_index.json")
    for name in components:
        src, dst = config_dir / name, out / name
        if dst.exists():
            shutil.rmtree(dst)
        torch.manual_seed(seed)
        if name == "tokenizer":
            max_length = json.loads((src / "tokenizer_config.json").read_text())["model_max_length"]
            build_roberta_tokenizer(dst, max_length)
        elif name == "tokenizer_2" and (src / "tokenizer_config.json").is_file():  # VITS, text-to-speech
            settings = json.loads((src / "tokenizer_config.json").read_text())
            build_vits_tokenizer(dst, settings["model_max_length"], settings["phonemize"])
        elif name == "tokenizer_2":
            build_t5_tokenizer(dst, 128)  # flan-t5's tokenizer truncates at 128 (not among the configs)
        elif name == "scheduler":
            shutil.copytree(src, dst)
        elif name == "feature_extractor":
            config = json.loads((src / "preprocessor_config.json").read_text())
            ClapFeatureExtractor(**config).save_pretrained(dst)
        else:
            model = _build(name, src).eval()
            perturb_vectors(model)
            if getattr(model, "use_learned_position_embedding", None):  # text-to-speech projection
                with torch.no_grad():  # zero-initialised: random values, so that parity checks they are added
                    model.learnable_positional_embedding.normal_()
            if name == "text_encoder":
                model = model.to(torch.float64)  # as the official config's torch_dtype says
            model.save_pretrained(dst, safe_serialization=True)
            if name == "language_model":  # keep the official extra field (save_pretrained drops unknown ones)
                saved = json.loads((dst / "config.json").read_text())
                saved["max_new_tokens"] = json.loads((src / "config.json").read_text())["max_new_tokens"]
                (dst / "config.json").write_text(json.dumps(saved, indent=2))
            del model
        print(f"wrote {dst}", flush=True)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-dir", required=True, help="e.g. scripts/checkpoint_configs/audioldm2")
    parser.add_argument("out_dir")
    parser.add_argument("--components", nargs="+", default=list(ALL_COMPONENTS), choices=ALL_COMPONENTS)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    make_random_checkpoint(args.config_dir, args.out_dir, args.components, args.seed)


if __name__ == "__main__":
    main()
