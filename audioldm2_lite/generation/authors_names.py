"""The authors' tensor names and the hub layout's, stage by stage: one table of (authors' prefix, hub prefix)
pairs per stage, read in both directions (`rename`).

The authors' names come from their module trees (haoheliu/AudioLDM2, `audioldm2/latent_diffusion/modules/...`):
the UNet's `openaimodel.UNetModel` (input_blocks / middle_block / output_blocks, ResBlock and SpatialTransformer),
the VAE's `autoencoder.AutoencoderKL` (LDM's Encoder / Decoder), the HiFi-GAN `hifigan.models.Generator`, the
CLAP text branch (transformers' RobertaModel inside open_clip's CLAP) and `SequenceGenAudioMAECond`'s own layers.
The hub names are diffusers' and transformers'. authors_checkpoint.py reads files with these tables;
scripts/make_authors_checkpoint.py writes tiny files with them the other way.
"""

from __future__ import annotations

from ..models.hub_config import CheckpointError


def rename(state_dict: dict, prefix: str, pairs: list[tuple[str, str]], file: str, stage: str,
           to_hub: bool = True) -> dict:
    """The tensors under `prefix`, each renamed by the longest matching prefix of `pairs` (authors' -> hub, or
    hub -> authors' with to_hub=False); a tensor no pair covers is an error naming the file."""
    source, target = (0, 1) if to_hub else (1, 0)
    ordered = sorted(pairs, key=lambda pair: -len(pair[source]))
    renamed = {}
    for key, tensor in state_dict.items():
        if not key.startswith(prefix):
            continue
        name = key[len(prefix):]
        pair = next((pair for pair in ordered if name.startswith(pair[source])), None)
        if pair is None:
            raise CheckpointError(f"{file}: tensor '{key}' of the {stage} has no place in audioldm2_lite's {stage} "
                                  f"(shape {tuple(tensor.shape)}); is the file from a different model?")
        renamed[pair[target] + name[len(pair[source]):]] = tensor
    return renamed


RESNET_NAMES = [  # openaimodel.ResBlock -> diffusers' ResnetBlock2D
    ("in_layers.0.", "norm1."), ("in_layers.2.", "conv1."), ("emb_layers.1.", "time_emb_proj."),
    ("out_layers.0.", "norm2."), ("out_layers.3.", "conv2."), ("skip_connection.", "conv_shortcut."),
]


def unet_pairs(levels: int, layers_per_block: int, attention: list[bool], per_resnet: int) -> list[tuple[str, str]]:
    """The UNet's table. The authors number their blocks in one flat list per path (`input_blocks.<n>.<layer>`:
    conv_in, then per level `layers_per_block` x [ResBlock, its `per_resnet` spatial transformers], then a
    downsampling conv; `output_blocks` mirror them with one more ResBlock per level and the upsampling conv
    last), diffusers per level (`down_blocks.<level>.resnets.<i>`, `.attentions.<i * per_resnet + j>`)."""
    pairs = [("time_embed.0.", "time_embedding.linear_1."), ("time_embed.2.", "time_embedding.linear_2."),
             ("film_emb.", "class_embedding."), ("input_blocks.0.0.", "conv_in."),
             ("out.0.", "conv_norm_out."), ("out.2.", "conv_out.")]

    def block(authors: str, hub: str, resnet: int, transformers: int):
        pairs.extend((f"{authors}.0.{old}", f"{hub}.resnets.{resnet}.{new}") for old, new in RESNET_NAMES)
        pairs.extend((f"{authors}.{1 + j}.", f"{hub}.attentions.{resnet * transformers + j}.") for j in range(transformers))

    n = 1
    for level in range(levels):
        for r in range(layers_per_block):
            block(f"input_blocks.{n}", f"down_blocks.{level}", r, per_resnet if attention[level] else 0)
            n += 1
        if level < levels - 1:
            pairs.append((f"input_blocks.{n}.0.op.", f"down_blocks.{level}.downsamplers.0.conv."))
            n += 1
    block("middle_block", "mid_block", 0, per_resnet)
    pairs.extend((f"middle_block.{per_resnet + 1}.{old}", f"mid_block.resnets.1.{new}") for old, new in RESNET_NAMES)
    n = 0
    for up, level in enumerate(reversed(range(levels))):
        transformers = per_resnet if attention[level] else 0
        for r in range(layers_per_block + 1):
            block(f"output_blocks.{n}", f"up_blocks.{up}", r, transformers)
            if level > 0 and r == layers_per_block:
                pairs.append((f"output_blocks.{n}.{1 + transformers}.conv.", f"up_blocks.{up}.upsamplers.0.conv."))
            n += 1
    return pairs


def unet_layout_of_authors(keys: list[str]) -> dict:
    """levels, layers_per_block, attention per level and transformers per ResBlock of an authors' UNet."""
    inputs = sorted({int(k.split(".")[1]) for k in keys if k.startswith("input_blocks.")})
    downsamplers = [n for n in inputs if f"input_blocks.{n}.0.op.weight" in keys]
    levels = len(downsamplers) + 1
    per_level = (len(inputs) - 1 - len(downsamplers)) // levels
    first = [1 + level * (per_level + 1) for level in range(levels)]  # each level's first ResBlock
    transformers = lambda n: len({k.split(".")[2] for k in keys
                                  if k.startswith(f"input_blocks.{n}.") and k.endswith(".proj_in.weight")})
    return dict(levels=levels, layers_per_block=per_level, attention=[transformers(n) > 0 for n in first],
                per_resnet=max(transformers(n) for n in first))


VAE_RESNET = [("nin_shortcut.", "conv_shortcut."), ("", "")]  # the rest of a ResnetBlock has diffusers' names


def vae_pairs(levels: int, layers_per_block: int) -> list[tuple[str, str]]:
    """diffusionmodules/model.py Encoder / Decoder -> diffusers' AutoencoderKL. The mid attention's 1x1 convs
    become linear layers (reshaped in stage_to_hub / hub_to_authors)."""
    pairs = [("quant_conv.", "quant_conv."), ("post_quant_conv.", "post_quant_conv.")]
    for part in ("encoder", "decoder"):
        pairs += [(f"{part}.conv_in.", f"{part}.conv_in."), (f"{part}.conv_out.", f"{part}.conv_out."),
                  (f"{part}.norm_out.", f"{part}.conv_norm_out."),
                  (f"{part}.mid.attn_1.norm.", f"{part}.mid_block.attentions.0.group_norm."),
                  (f"{part}.mid.attn_1.q.", f"{part}.mid_block.attentions.0.to_q."),
                  (f"{part}.mid.attn_1.k.", f"{part}.mid_block.attentions.0.to_k."),
                  (f"{part}.mid.attn_1.v.", f"{part}.mid_block.attentions.0.to_v."),
                  (f"{part}.mid.attn_1.proj_out.", f"{part}.mid_block.attentions.0.to_out.0.")]
        pairs += [(f"{part}.mid.block_{i + 1}.{old}", f"{part}.mid_block.resnets.{i}.{new}")
                  for i in range(2) for old, new in VAE_RESNET]
    for level in range(levels):
        pairs += [(f"encoder.down.{level}.block.{i}.{old}", f"encoder.down_blocks.{level}.resnets.{i}.{new}")
                  for i in range(layers_per_block) for old, new in VAE_RESNET]
        pairs.append((f"encoder.down.{level}.downsample.conv.", f"encoder.down_blocks.{level}.downsamplers.0.conv."))
        # the decoder's levels run the other way: the authors' up.<L-1> runs first, diffusers' up_blocks.0
        up = levels - 1 - level
        pairs += [(f"decoder.up.{level}.block.{i}.{old}", f"decoder.up_blocks.{up}.resnets.{i}.{new}")
                  for i in range(layers_per_block + 1) for old, new in VAE_RESNET]
        pairs.append((f"decoder.up.{level}.upsample.conv.", f"decoder.up_blocks.{up}.upsamplers.0.conv."))
    return pairs


def vocoder_pairs(stages: int, blocks: int) -> list[tuple[str, str]]:
    """hifigan/models.py Generator -> transformers' SpeechT5HifiGan: only `ups` is renamed."""
    return ([("conv_pre.", "conv_pre."), ("conv_post.", "conv_post.")]
            + [(f"ups.{i}.", f"upsampler.{i}.") for i in range(stages)]
            + [(f"resblocks.{j}.", f"resblocks.{j}.") for j in range(blocks)])


CLAP_TEXT_PAIRS = [  # open_clip CLAP (text_branch = transformers' RobertaModel) -> transformers' ClapModel
    ("text_branch.", "text_model."),
    ("text_projection.0.", "text_projection.linear1."),  # nn.Sequential(Linear, ReLU, Linear)
    ("text_projection.2.", "text_projection.linear2."),
]
PROJECTION_PAIRS = [  # SequenceGenAudioMAECond's own layers -> diffusers' AudioLDM2ProjectionModel
    ("input_sequence_embed_linear.0.", "projection."),  # CLAP's 512 -> GPT-2's width
    ("input_sequence_embed_linear.1.", "projection_1."),  # T5's 1024 -> GPT-2's width
]
PROJECTION_OWN = ("input_sequence_embed_linear.", "start_of_sequence_tokens.", "end_of_sequence_tokens.")
WHOLE = [("", "")]  # T5 and GPT-2 are transformers' own modules: their names are the hub's already
