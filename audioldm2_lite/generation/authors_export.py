"""An authors' checkpoint file written as a hub-layout folder (scripts/convert_authors_checkpoint.py), which is also
how AudioLDM2Pipeline.from_pretrained reads one (authors_models.authors_hub_folder).

The stages, their configs and hub-layout tensors come from `authors_checkpoint.authors_to_hub`; this module adds
what a folder needs besides: model_index.json with the diffusers / transformers class each component matches,
the scheduler config, the tokenizers (copied from the text models' folders, T5's cut at the authors' 128 tokens)
and, where the file's ranking CLAP gives `text_encoder` an audio tower, CLAP's feature extractor config. The folder
is written aside and renamed when complete, so an interrupted conversion never leaves half a folder.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .authors_checkpoint import (
    AUTHORS_CONFIGS, TEXT_MODEL_FILES, TEXT_MODELS, authors_to_hub, read_authors_file, resolve_authors_file,
    text_model_folder,
)

# component -> (library, class) in model_index.json; the weight file's name follows the library
HUB_CLASSES = {
    "unet": ("diffusers", "AudioLDM2UNet2DConditionModel"), "vae": ("diffusers", "AutoencoderKL"),
    "vocoder": ("transformers", "SpeechT5HifiGan"), "text_encoder": ("transformers", "ClapModel"),
    "text_encoder_2": ("transformers", "T5EncoderModel"), "language_model": ("transformers", "GPT2Model"),
    "projection_model": ("diffusers", "AudioLDM2ProjectionModel"),
}
WEIGHT_FILES = {"diffusers": "diffusion_pytorch_model.safetensors", "transformers": "model.safetensors"}
# tokenizer folder -> (the component it serves, hub id, class, the authors' maximum length if not the tokenizer's)
TOKENIZERS = {"tokenizer": ("text_encoder", TEXT_MODELS["clap_text"], "RobertaTokenizerFast", None),
              # FlanT5HiddenState.encode_text truncates at 128 tokens
              "tokenizer_2": ("text_encoder_2", TEXT_MODELS["t5"], "T5TokenizerFast", 128)}
# ClapFeatureExtractor as cvssp/audioldm2 configures it (48 kHz, random 10 s crop, repeat-padding)
CLAP_FEATURES = {"feature_extractor_type": "ClapFeatureExtractor", "feature_size": 64, "fft_window_size": 1024,
                 "frequency_max": 14000, "frequency_min": 50, "hop_length": 480, "max_length_s": 10,
                 "padding": "repeatpad", "sampling_rate": 48000, "truncation": "rand_trunc"}


def write_hub_folder(model, out_dir, text_models_dir=None) -> Path:
    """The hub-layout folder of an authors' file (see scripts/convert_authors_checkpoint.py), written to out_dir."""
    from safetensors.torch import save_file

    file = resolve_authors_file(model)
    stages = authors_to_hub(read_authors_file(file), str(file), text_models_dir)
    kind = stages["model"][0]["kind"]
    audioldm2 = AUTHORS_CONFIGS[kind].family == "audioldm2"
    out = Path(out_dir)
    partial = out.with_name(out.name + ".partial")  # written aside, renamed when complete: never half a folder
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    index = {"_class_name": "AudioLDM2Pipeline" if audioldm2 else "AudioLDMAuthorsPipeline",
             "_diffusers_version": "0.42.0", "_authors_model": kind}
    for name, (config, tensors) in stages.items():
        if tensors is None:
            continue
        library, class_name = HUB_CLASSES[name]
        config = dict(config)
        if name == "unet":  # the authors' model wherever the folder loads (authors.resolve_reference)
            config["_authors_model"] = kind
        (partial / name).mkdir()
        (partial / name / "config.json").write_text(json.dumps(config, indent=2))
        # clone: tensors tied in the file (T5's shared and encoder.embed_tokens) are stored once each, as the hub does
        save_file({k: v.contiguous().clone() for k, v in tensors.items()}, partial / name / WEIGHT_FILES[library])
        index[name] = [library, class_name]
    (partial / "scheduler").mkdir()
    (partial / "scheduler" / "scheduler_config.json").write_text(json.dumps(stages["scheduler"][0], indent=2))
    index["scheduler"] = ["diffusers", "DDIMScheduler"]
    for name, (component, repo_id, class_name, max_length) in TOKENIZERS.items():
        if component not in stages:
            continue
        source = text_model_folder(repo_id, text_models_dir)
        (partial / name).mkdir()
        for file_name in TEXT_MODEL_FILES[1:]:
            if (source / file_name).is_file():
                shutil.copy(source / file_name, partial / name / file_name)
        if max_length is not None:
            settings = partial / name / "tokenizer_config.json"
            settings.write_text(json.dumps({**json.loads(settings.read_text()), "model_max_length": max_length}))
        index[name] = ["transformers", class_name]
    if "audio_config" in stages.get("text_encoder", ({},))[0]:  # an audio tower: candidates can be ranked
        (partial / "feature_extractor").mkdir()
        (partial / "feature_extractor" / "preprocessor_config.json").write_text(json.dumps(CLAP_FEATURES, indent=2))
        index["feature_extractor"] = ["transformers", "ClapFeatureExtractor"]
    (partial / "model_index.json").write_text(json.dumps(index, indent=2))
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)
    return out
