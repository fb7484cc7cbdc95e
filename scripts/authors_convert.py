"""Convert an authors'-format AudioLDM 2 checkpoint to the hub layout with diffusers' own conversion script.

Runs in this project's venv (diffusers 0.42). The script is diffusers' `scripts/convert_original_audioldm2_to_diffusers.py`,
which is not part of the installed package: give its path (a checkout of huggingface/diffusers). It builds the
CLAP, Flan-T5 and GPT-2 configs and tokenizers from the hub names `laion/clap-htsat-unfused`,
`google/flan-t5-large` and `gpt2`; the local stand-ins that scripts/authors_reference.py wrote under
`<reference dir>/hub` are used by running it there with HF_HUB_OFFLINE=1.

    python scripts/authors_convert.py /work/authors-refs/audioldm2-full-tiny \
        --diffusers-script /work/authors-refs/convert_original_audioldm2_to_diffusers.py

The script's `--original_config_file` is passed to `yaml.safe_load` as is (a path would load as a string), so
the function is called directly with the YAML text of the authors' config (`authors_config.json`, written by
authors_reference.py) plus the `vocoder_config` entry the script reads: the authors' HiFi-GAN config, which
their code hard-codes in `audioldm2/utilities/model.py` (`get_vocoder_config`) rather than in the model config.
Writes `<reference dir>/hub_layout/`.
"""

import argparse
import functools
import importlib.util
import json
import os
from pathlib import Path

import torch
import yaml

AUTHORS_VOCODER_16K = dict(  # audioldm2/utilities/model.py get_vocoder_config
    upsample_rates=[5, 4, 2, 2, 2], upsample_kernel_sizes=[16, 16, 8, 4, 4], upsample_initial_channel=1024,
    resblock_kernel_sizes=[3, 7, 11], resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5], [1, 3, 5]],
    num_mels=64, sampling_rate=16000,
)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("reference_dir", type=Path)
    parser.add_argument("--diffusers-script", type=Path, required=True)
    args = parser.parse_args()

    ref = args.reference_dir.resolve()
    config = json.loads((ref / "authors_config.json").read_text())
    name = next(p.stem for p in ref.glob("*.pth"))
    checkpoint = ref / f"{name}.pth"
    state = torch.load(checkpoint, map_location="cpu", weights_only=False, mmap=True)["state_dict"]
    # The vocoder's width is read from the checkpoint (tiny files shrink it; rates and kernels are the authors').
    vocoder = dict(AUTHORS_VOCODER_16K, upsample_initial_channel=state["first_stage_model.vocoder.conv_pre.weight_v"].shape[0]
                   if "first_stage_model.vocoder.conv_pre.weight_v" in state
                   else state["first_stage_model.vocoder.conv_pre.weight"].shape[0])
    config["model"]["params"]["vocoder_config"] = {"params": vocoder}
    del state

    spec = importlib.util.spec_from_file_location("convert_original_audioldm2", args.diffusers_script)
    converter = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(converter)
    # The script loads the whole file with torch.load; memory-map it instead (a full-size file is ~9 GB).
    # (This patches torch.load for this short-lived process; the partial holds the original function.)
    converter.torch.load = functools.partial(torch.load, mmap=True, weights_only=False)

    os.environ["HF_HUB_OFFLINE"] = "1"
    os.chdir(ref / "hub")  # transformers finds the hub names as local folders here
    # The authors' UNetModel puts a self-attention-only transformer before the ones of `context_dim`
    # (openaimodel.py, extra_sa_layer=True); the script's own DEFAULT_CONFIG writes that as a leading None.
    cross_attention_dim = [None] + list(config["model"]["params"]["unet_config"]["params"]["context_dim"])
    pipe = converter.load_pipeline_from_original_AudioLDM2_ckpt(
        checkpoint_path=str(checkpoint), original_config_file=yaml.safe_dump(config), device="cpu",
        cross_attention_dim=cross_attention_dim,
    )
    out = ref / "hub_layout"
    pipe.save_pretrained(out)
    print(f"converted {checkpoint} -> {out}")


if __name__ == "__main__":
    main()
