"""diffusers → original Stability (LDM / "single file") key layout, for any block count and `layers_per_block`.

diffusers only converts single file → diffusers; this is the other direction. The index mapping is derived from the
diffusers config (number of levels, layers per level, which levels have attentions / down- and upsamplers), so tiny
test models and full-size SD1.5 / SDXL go through the same code.

Layout (as written by Stability's `sgm` / CompVis `ldm` code, read by AUTOMATIC1111, ComfyUI, kohya and diffusers):
  UNet   `model.diffusion_model.`: input_blocks.N.{0 resnet, 1 attention | 0.op downsampler}, middle_block.{0,1,2},
         output_blocks.N.{0 resnet, 1 attention, 1|2 upsampler}, time_embed.{0,2}, label_emb.0.{0,2} (SDXL), out.{0,2}
  VAE    `first_stage_model.`: encoder.down.I.block.J, decoder.up.(n-1-I).block.J, mid.block_1/attn_1/block_2,
         attention q/k/v/proj_out as 1×1 convs
  CLIP-L `cond_stage_model.transformer.` (SD1.5) / `conditioner.embedders.0.transformer.` (SDXL): HF names
  CLIP-G `conditioner.embedders.1.model.`: OpenCLIP names, fused `attn.in_proj_weight` (q, k, v stacked),
         `text_projection` stored as [width, proj] (the transpose of HF's Linear weight)."""

from __future__ import annotations

import math

import torch

from tunelab.errors import TunelabError
from tunelab.models.components import ModelComponents

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_L_PREFIX = {"sd15": "cond_stage_model.transformer.", "sdxl": "conditioner.embedders.0.transformer."}
CLIP_G_PREFIX = "conditioner.embedders.1.model."
# OpenCLIP's learned logit scale sits at its clamp, ln(100); no SD pipeline uses it, files carry it anyway.
DEFAULT_LOGIT_SCALE = math.log(100.0)

UNET_RESNET_NAMES = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
VAE_RESNET_NAMES = {"conv_shortcut": "nin_shortcut"}
VAE_ATTENTION_NAMES = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def part_prefixes(architecture: str) -> dict[str, str]:
    """Key prefix of each part (ModelComponents.named_parts() names) in a single file."""
    prefixes = {"unet": UNET_PREFIX, "vae": VAE_PREFIX, "text_encoder": CLIP_L_PREFIX[architecture]}
    if architecture == "sdxl":
        prefixes["text_encoder_2"] = CLIP_G_PREFIX
    return prefixes


def _per_level(value, levels: int) -> list[int]:
    return list(value) if isinstance(value, (list, tuple)) else [value] * levels


def unet_module_map(config) -> dict[str, str]:
    """diffusers module path → LDM module path, derived from the UNet config."""
    down_types, up_types = list(config["down_block_types"]), list(config["up_block_types"])
    levels = len(down_types)
    layers = _per_level(config["layers_per_block"], levels)
    modules = {
        "conv_in": "input_blocks.0.0",
        "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2",
        "conv_norm_out": "out.0",
        "conv_out": "out.2",
    }
    if config.get("addition_embed_type") == "text_time":
        modules["add_embedding.linear_1"] = "label_emb.0.0"
        modules["add_embedding.linear_2"] = "label_emb.0.2"
    elif config.get("addition_embed_type") or config.get("class_embed_type"):
        raise TunelabError(f"UNet conditioning {config.get('addition_embed_type') or config.get('class_embed_type')!r} "
                           "has no SD1.5/SDXL single-file layout")

    index = 1  # input_blocks.0 is conv_in
    for level, block_type in enumerate(down_types):
        has_attention = "CrossAttn" in block_type
        for layer in range(layers[level]):
            modules[f"down_blocks.{level}.resnets.{layer}"] = f"input_blocks.{index}.0"
            if has_attention:
                modules[f"down_blocks.{level}.attentions.{layer}"] = f"input_blocks.{index}.1"
            index += 1
        if level < levels - 1:
            modules[f"down_blocks.{level}.downsamplers.0.conv"] = f"input_blocks.{index}.0.op"
            index += 1

    modules["mid_block.resnets.0"] = "middle_block.0"
    modules["mid_block.attentions.0"] = "middle_block.1"
    modules["mid_block.resnets.1"] = "middle_block.2"

    index = 0
    up_layers = list(reversed(layers))
    for level, block_type in enumerate(up_types):
        has_attention = "CrossAttn" in block_type
        for layer in range(up_layers[level] + 1):  # up blocks have one resnet more (the skip from the downsampler)
            modules[f"up_blocks.{level}.resnets.{layer}"] = f"output_blocks.{index}.0"
            if has_attention:
                modules[f"up_blocks.{level}.attentions.{layer}"] = f"output_blocks.{index}.1"
            index += 1
        if level < levels - 1:  # the upsampler is the last module of the level's last output block
            modules[f"up_blocks.{level}.upsamplers.0.conv"] = f"output_blocks.{index - 1}.{2 if has_attention else 1}.conv"
    return modules


def vae_module_map(config) -> dict[str, str]:
    """diffusers module path → LDM module path for AutoencoderKL (decoder levels are numbered bottom-up in LDM)."""
    levels = len(config["down_block_types"])
    layers = config["layers_per_block"]
    modules = {"quant_conv": "quant_conv", "post_quant_conv": "post_quant_conv"}
    for side in ("encoder", "decoder"):
        modules[f"{side}.conv_in"] = f"{side}.conv_in"
        modules[f"{side}.conv_out"] = f"{side}.conv_out"
        modules[f"{side}.conv_norm_out"] = f"{side}.norm_out"
        modules[f"{side}.mid_block.resnets.0"] = f"{side}.mid.block_1"
        modules[f"{side}.mid_block.attentions.0"] = f"{side}.mid.attn_1"
        modules[f"{side}.mid_block.resnets.1"] = f"{side}.mid.block_2"
    for level in range(levels):
        for layer in range(layers):
            modules[f"encoder.down_blocks.{level}.resnets.{layer}"] = f"encoder.down.{level}.block.{layer}"
        for layer in range(layers + 1):
            modules[f"decoder.up_blocks.{level}.resnets.{layer}"] = f"decoder.up.{levels - 1 - level}.block.{layer}"
        if level < levels - 1:
            modules[f"encoder.down_blocks.{level}.downsamplers.0.conv"] = f"encoder.down.{level}.downsample.conv"
            modules[f"decoder.up_blocks.{level}.upsamplers.0.conv"] = f"decoder.up.{levels - 1 - level}.upsample.conv"
    return modules


def _remap(state_dict: dict[str, torch.Tensor], modules: dict[str, str], prefix: str, inner) -> dict[str, torch.Tensor]:
    """Rename every key by its longest mapped module prefix; `inner(module, rest, tensor)` renames inside it."""
    out = {}
    for key, tensor in state_dict.items():
        parts = key.split(".")
        cut = next((c for c in range(len(parts) - 1, 0, -1) if ".".join(parts[:c]) in modules), None)
        if cut is None:
            raise TunelabError(f"no single-file layout for weight {key!r}")
        module = ".".join(parts[:cut])
        rest, tensor = inner(module, ".".join(parts[cut:]), tensor)
        out[prefix + modules[module] + "." + rest] = tensor
    return out


def _rename_first(rest: str, names: dict[str, str]) -> str:
    for old, new in names.items():
        if rest.startswith(old + "."):
            return new + rest[len(old):]
    return rest


def _unet_inner(module: str, rest: str, tensor: torch.Tensor):
    if ".resnets." in module:
        rest = _rename_first(rest, UNET_RESNET_NAMES)
    return rest, tensor  # attention (transformer) internals keep their names


def _vae_inner(module: str, rest: str, tensor: torch.Tensor):
    if ".resnets." in module:
        rest = _rename_first(rest, VAE_RESNET_NAMES)
    elif ".attentions." in module:
        rest = _rename_first(rest, VAE_ATTENTION_NAMES)
        if rest.endswith(".weight") and tensor.ndim == 2:  # LDM's VAE attention uses 1×1 convs
            tensor = tensor[:, :, None, None]
    return rest, tensor


def unet_to_ldm(state_dict: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    return _remap(state_dict, unet_module_map(config), UNET_PREFIX, _unet_inner)


def vae_to_ldm(state_dict: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    return _remap(state_dict, vae_module_map(config), VAE_PREFIX, _vae_inner)


def clip_l_to_ldm(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """HF CLIP names under `prefix`; transformers ≥ 5.6 dropped the `text_model.` level, the file keeps it."""
    out = {prefix + (k if k.startswith("text_model.") else "text_model." + k): v for k, v in state_dict.items()}
    positions = out[prefix + "text_model.embeddings.position_embedding.weight"].shape[0]
    out[prefix + "text_model.embeddings.position_ids"] = torch.arange(positions, device=_device(state_dict))[None]
    return out


def _device(state_dict) -> torch.device:
    return next(iter(state_dict.values())).device


def open_clip_to_ldm(state_dict: dict[str, torch.Tensor], prefix: str, logit_scale: float) -> dict[str, torch.Tensor]:
    """HF CLIPTextModelWithProjection → OpenCLIP text tower names, q/k/v fused into `in_proj_*`."""
    sd = {k.removeprefix("text_model."): v for k, v in state_dict.items()}
    out = {
        "token_embedding.weight": sd.pop("embeddings.token_embedding.weight"),
        "positional_embedding": sd.pop("embeddings.position_embedding.weight"),
        "ln_final.weight": sd.pop("final_layer_norm.weight"),
        "ln_final.bias": sd.pop("final_layer_norm.bias"),
        "text_projection": sd.pop("text_projection.weight").T,
        "logit_scale": torch.tensor(logit_scale, device=_device(state_dict)),
    }
    layer_names = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
                   "self_attn.out_proj": "attn.out_proj"}
    layers = sorted({int(k.split(".")[2]) for k in sd if k.startswith("encoder.layers.")})
    for i in layers:
        hf, oc = f"encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[oc + f"attn.in_proj_{kind}"] = torch.cat([sd.pop(hf + f"self_attn.{p}_proj.{kind}") for p in "qkv"])
            for old, new in layer_names.items():
                out[oc + f"{new}.{kind}"] = sd.pop(hf + f"{old}.{kind}")
    if sd:
        raise TunelabError(f"no single-file layout for text encoder weight(s) {sorted(sd)[:3]}")
    return {prefix + k: v for k, v in out.items()}


def components_to_ldm(components: ModelComponents) -> dict[str, torch.Tensor]:
    """The whole model as one original-layout state dict (tensors shared with the modules, not copied)."""
    arch = components.architecture
    sd = unet_to_ldm(_plain_state_dict(components.unet), components.unet.config)
    sd.update(vae_to_ldm(_plain_state_dict(components.vae), components.vae.config))
    sd.update(clip_l_to_ldm(_plain_state_dict(components.text_encoders[0]), CLIP_L_PREFIX[arch]))
    if arch == "sdxl":
        logit_scale = components.extra.get("logit_scale", DEFAULT_LOGIT_SCALE)
        sd.update(open_clip_to_ldm(_plain_state_dict(components.text_encoders[1]), CLIP_G_PREFIX, logit_scale))
    return sd


def _plain_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """State dict without the `_orig_mod.` level torch.compile adds."""
    return {k.removeprefix("_orig_mod."): v for k, v in module.state_dict().items()}


# ---- original layout → diffusers (loading): the same module maps, inverted ------------------------------------
# Each part is read from its own explicit prefix, so nothing is guessed from shapes: two text encoders of the same
# width (the toy base) cannot be mistaken for one another.

# Tensors a file may carry under a part's prefix that are not weights of the module: CLIP's position_ids (a buffer
# every module rebuilds), OpenCLIP's logit_scale (kept in `extra`) and causal attn_mask, and the autoencoder's
# training loss (LPIPS / discriminator) that some files with a baked-in VAE still hold.
NON_WEIGHT_SUFFIXES = ("position_ids", "logit_scale", "attn_mask")
NON_WEIGHT_PREFIXES = (VAE_PREFIX + "loss.",)
OPEN_CLIP_LAYER_NAMES = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
                         "attn.out_proj": "self_attn.out_proj"}


def is_non_weight(key: str) -> bool:
    return key.endswith(NON_WEIGHT_SUFFIXES) or key.startswith(NON_WEIGHT_PREFIXES)


def part_of_key(key: str, architecture: str) -> str | None:
    """The part (unet, vae, text_encoder, text_encoder_2) whose prefix `key` has; None for keys outside every part
    (EMA copies, noise-schedule buffers: training state, not the model)."""
    return next((part for part, prefix in part_prefixes(architecture).items() if key.startswith(prefix)), None)


def _remap_back(state_dict, inverse: dict[str, str], prefix: str, inner, unplaced: list[str]) -> dict[str, torch.Tensor]:
    """Inverse of `_remap`: LDM key (with `prefix`) → diffusers key by the longest LDM module path in `inverse`."""
    out = {}
    for key, tensor in state_dict.items():
        parts = key.removeprefix(prefix).split(".")
        cut = next((c for c in range(len(parts) - 1, 0, -1) if ".".join(parts[:c]) in inverse), None)
        if cut is None:
            unplaced.append(key)
            continue
        module = inverse[".".join(parts[:cut])]
        rest, tensor = inner(module, ".".join(parts[cut:]), tensor)
        out[module + "." + rest] = tensor
    return out


def _inverted(names: dict[str, str]) -> dict[str, str]:
    return {new: old for old, new in names.items()}


def _unet_inner_back(module: str, rest: str, tensor: torch.Tensor):
    if ".resnets." in module:
        rest = _rename_first(rest, _inverted(UNET_RESNET_NAMES))
    return rest, tensor


def _vae_inner_back(module: str, rest: str, tensor: torch.Tensor):
    if ".resnets." in module:
        rest = _rename_first(rest, _inverted(VAE_RESNET_NAMES))
    elif ".attentions." in module:
        rest = _rename_first(rest, _inverted(VAE_ATTENTION_NAMES))
        if rest.endswith(".weight") and tensor.ndim == 4:  # 1×1 conv → diffusers' linear
            tensor = tensor.reshape(tensor.shape[:2])
    return rest, tensor


def clip_l_from_ldm(state_dict: dict[str, torch.Tensor], prefix: str, unplaced: list[str]) -> dict[str, torch.Tensor]:
    """HF CLIP names (with the `text_model.` level; the loader drops it where the module has none)."""
    out = {}
    for key, tensor in state_dict.items():
        name = key.removeprefix(prefix)
        if not name.startswith("text_model."):
            unplaced.append(key)
            continue
        out[name] = tensor
    return out


def open_clip_from_ldm(state_dict: dict[str, torch.Tensor], prefix: str, unplaced: list[str]) -> dict[str, torch.Tensor]:
    """OpenCLIP text tower → HF CLIPTextModelWithProjection: fused `in_proj_*` split into q/k/v, `text_projection`
    ([width, proj]) transposed into a Linear weight."""
    fixed = {
        "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
        "positional_embedding": "text_model.embeddings.position_embedding.weight",
        "ln_final.weight": "text_model.final_layer_norm.weight",
        "ln_final.bias": "text_model.final_layer_norm.bias",
    }
    out = {}
    for key, tensor in state_dict.items():
        name = key.removeprefix(prefix)
        if name in fixed:
            out[fixed[name]] = tensor
        elif name == "text_projection":
            out["text_projection.weight"] = tensor.T.contiguous()
        elif name.startswith("transformer.resblocks."):
            index, rest = name.removeprefix("transformer.resblocks.").split(".", 1)
            hf = f"text_model.encoder.layers.{index}."
            if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
                kind = rest.removeprefix("attn.in_proj_")
                # clones, not views: three parameters sharing one storage could not be saved with safetensors
                for p, chunk in zip("qkv", tensor.chunk(3, dim=0)):
                    out[hf + f"self_attn.{p}_proj.{kind}"] = chunk.clone()
                continue
            module, _, kind = rest.rpartition(".")
            if module not in OPEN_CLIP_LAYER_NAMES or not index.isdigit():
                unplaced.append(key)
                continue
            out[hf + f"{OPEN_CLIP_LAYER_NAMES[module]}.{kind}"] = tensor
        else:
            unplaced.append(key)
    return out


class LdmToParts:
    """Original-layout state dict → ({part: diffusers-named state dict}, unplaced keys), the module maps built once:
    a loader calls it once on the whole header (meta tensors: names and shapes) and then per tensor as it reads.

    Keys outside every part are left out (training state); non-weight keys inside a part are dropped; keys inside a
    part that no mapping places are returned, for the caller to name. Every key maps on its own (no key needs
    another), which is what lets a file be converted tensor by tensor."""

    def __init__(self, architecture: str, configs: dict[str, dict]):
        self.architecture = architecture
        self.prefixes = part_prefixes(architecture)
        self.unet_inverse = _inverted(unet_module_map(configs["unet"]))
        self.vae_inverse = _inverted(vae_module_map(configs["vae"]))

    def __call__(self, state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, dict[str, torch.Tensor]], list[str]]:
        by_part: dict[str, dict[str, torch.Tensor]] = {part: {} for part in self.prefixes}
        for key, tensor in state_dict.items():
            part = part_of_key(key, self.architecture)
            if part is not None and not is_non_weight(key):
                by_part[part][key] = tensor
        unplaced: list[str] = []
        parts = {
            "unet": _remap_back(by_part["unet"], self.unet_inverse, UNET_PREFIX, _unet_inner_back, unplaced),
            "vae": _remap_back(by_part["vae"], self.vae_inverse, VAE_PREFIX, _vae_inner_back, unplaced),
            "text_encoder": clip_l_from_ldm(by_part["text_encoder"], self.prefixes["text_encoder"], unplaced),
        }
        if self.architecture == "sdxl":
            parts["text_encoder_2"] = open_clip_from_ldm(by_part["text_encoder_2"], CLIP_G_PREFIX, unplaced)
        return parts, unplaced


def ldm_to_parts(
    state_dict: dict[str, torch.Tensor], architecture: str, configs: dict[str, dict]
) -> tuple[dict[str, dict[str, torch.Tensor]], list[str]]:
    """`LdmToParts` applied once (see there)."""
    return LdmToParts(architecture, configs)(state_dict)
