"""The authors' tensor names and the hub layout's, stage by stage: one table of (authors' prefix, hub prefix)
pairs per stage, read in both directions (`rename`).

The authors' names come from their module trees (haoheliu/AudioLDM2, `audioldm2/latent_diffusion/modules/...`):
the UNet's `openaimodel.UNetModel` (input_blocks / middle_block / output_blocks, ResBlock and SpatialTransformer),
the VAE's `autoencoder.AutoencoderKL` (LDM's Encoder / Decoder), the HiFi-GAN `hifigan.models.Generator`, the
CLAP text branch (transformers' RobertaModel inside open_clip's CLAP), CLAP's audio branch (open_clip's `htsat.py`
HTSAT_Swin_Transformer) and `SequenceGenAudioMAECond`'s own layers.
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


SWIN_BLOCK_NAMES = [  # htsat.py SwinTransformerBlock -> transformers' ClapAudioLayer
    ("norm1.", "layernorm_before."), ("attn.qkv.", "attention.self.qkv."),  # fused: split_qkv
    ("attn.relative_position_", "attention.self.relative_position_"),  # the bias table, and its index buffer
    ("attn.proj.", "attention.output.dense."), ("norm2.", "layernorm_after."),
    ("mlp.fc1.", "intermediate.dense."), ("mlp.fc2.", "output.dense."),
]


def clap_audio_pairs(depths: list[int]) -> list[tuple[str, str]]:
    """open_clip's CLAP audio side (HTSAT `audio_branch`, `audio_projection` = nn.Sequential(Linear, ReLU, Linear))
    -> transformers' ClapModel (`audio_model.audio_encoder`, `audio_projection`). Each attention's fused
    projection keeps the name `qkv` here; split_qkv / fuse_qkv turn it into query, key and value and back."""
    encoder = "audio_model.audio_encoder."
    pairs = [("audio_branch.bn0.", encoder + "batch_norm."), ("audio_branch.patch_embed.", encoder + "patch_embed."),
             ("audio_branch.norm.", encoder + "norm."),
             ("audio_projection.0.", "audio_projection.linear1."), ("audio_projection.2.", "audio_projection.linear2.")]
    for i, depth in enumerate(depths):
        pairs.append((f"audio_branch.layers.{i}.downsample.", f"{encoder}layers.{i}.downsample."))
        pairs += [(f"audio_branch.layers.{i}.blocks.{j}.{old}", f"{encoder}layers.{i}.blocks.{j}.{new}")
                  for j in range(depth) for old, new in SWIN_BLOCK_NAMES]
    return pairs


def split_qkv(audio: dict) -> dict:
    """The audio tower's fused `attention.self.qkv` tensors (rows: query, key, value) as three tensors."""
    out = {}
    for key, tensor in audio.items():
        if ".attention.self.qkv." in key:
            out.update((key.replace(".qkv.", f".{name}."), part)
                       for name, part in zip(("query", "key", "value"), tensor.chunk(3)))
        else:
            out[key] = tensor
    return out


def fuse_qkv(audio: dict) -> dict:
    """split_qkv backwards (scripts/make_authors_checkpoint.py): query, key and value stacked into `qkv`."""
    import torch

    parts = (".attention.self.query.", ".attention.self.key.", ".attention.self.value.")
    out = {k: v for k, v in audio.items() if not any(part in k for part in parts)}
    for key in (k for k in audio if parts[0] in k):
        out[key.replace(parts[0], ".attention.self.qkv.")] = torch.cat([audio[key.replace(parts[0], p)] for p in parts])
    return out
