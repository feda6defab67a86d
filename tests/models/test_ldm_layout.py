"""diffusers → original Stability layout, checked on full-size SDXL / SD1.5 built on the meta device (shapes only).

Where the expected layout comes from (facts, not code): key names and shapes of Stability's `sgm`/`ldm` modules
as listed by public tools that read `sd_xl_base_1.0` / SD 1.5 single files: a GGUF converter's architecture
detection (`input_blocks.3.0.op`, `output_blocks.2.2.conv` (SDXL) / `output_blocks.2.1.conv` (SD1.5),
`label_emb.0.0`), a C++ SD runtime's list of unused tensors (`conditioner.embedders.1.model.logit_scale`,
`...embedders.0.transformer.text_model.embeddings.position_ids`), an SDXL header validator
(`middle_block.1.transformer_blocks.9.attn2.to_v.weight` [1280,2048], `output_blocks.2.2.conv.weight`
[1280,1280,3,3], `out.2.weight` [4,320,3,3]), AUTOMATIC1111 PR #11757 and Stability-AI/generative-models
issue #431 (`resblocks.N.attn.in_proj_weight` [3840,1280]), and diffusers' `single_file_utils` key tables.
The real configs (SDXL base 1.0, SD 1.5) are the
ones shipped in `tunelab/models/configs/`. Independently, diffusers' own single-file converter must map our output
back to exactly the diffusers keys and shapes."""

import pytest
import torch
from diffusers.loaders.single_file_utils import (
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    convert_open_clip_checkpoint,
    infer_diffusers_model_type,
)

from tunelab.models.config_folders import shipped_configs
from tunelab.models.ldm_layout import components_to_ldm, part_prefixes
from tunelab.models.single_file import empty_components
from tunelab.models.tiny import tiny_sd15, tiny_sdxl


@pytest.fixture(scope="module")
def full_size():
    """{arch: (meta components, original-layout state dict of meta tensors)} for the real configs."""
    out = {}
    for arch in ("sdxl", "sd15"):
        components = empty_components(arch, shipped_configs(arch))
        assert components.unet.conv_in.weight.device.type == "meta"
        out[arch] = components, components_to_ldm(components)
    return out


SDXL_KEYS = {
    "model.diffusion_model.input_blocks.0.0.weight": [320, 4, 3, 3],
    "model.diffusion_model.input_blocks.3.0.op.weight": [320, 320, 3, 3],
    "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight": [640, 640],
    "model.diffusion_model.input_blocks.4.1.transformer_blocks.1.attn2.to_k.weight": [640, 2048],
    "model.diffusion_model.input_blocks.7.1.transformer_blocks.9.ff.net.0.proj.weight": [10240, 1280],
    "model.diffusion_model.input_blocks.4.0.skip_connection.weight": [640, 320, 1, 1],
    "model.diffusion_model.input_blocks.1.0.in_layers.2.weight": [320, 320, 3, 3],
    "model.diffusion_model.input_blocks.1.0.emb_layers.1.weight": [320, 1280],
    "model.diffusion_model.middle_block.1.transformer_blocks.9.attn2.to_v.weight": [1280, 2048],
    "model.diffusion_model.middle_block.2.out_layers.3.weight": [1280, 1280, 3, 3],
    "model.diffusion_model.output_blocks.2.2.conv.weight": [1280, 1280, 3, 3],
    "model.diffusion_model.output_blocks.5.2.conv.weight": [640, 640, 3, 3],
    "model.diffusion_model.output_blocks.8.0.skip_connection.weight": [320, 640, 1, 1],
    "model.diffusion_model.time_embed.0.weight": [1280, 320],
    "model.diffusion_model.label_emb.0.0.weight": [1280, 2816],
    "model.diffusion_model.label_emb.0.2.weight": [1280, 1280],
    "model.diffusion_model.out.0.weight": [320],
    "model.diffusion_model.out.2.weight": [4, 320, 3, 3],
    "first_stage_model.encoder.down.0.block.0.conv1.weight": [128, 128, 3, 3],
    "first_stage_model.encoder.down.1.block.0.nin_shortcut.weight": [256, 128, 1, 1],
    "first_stage_model.encoder.down.1.downsample.conv.weight": [256, 256, 3, 3],
    "first_stage_model.encoder.mid.attn_1.q.weight": [512, 512, 1, 1],
    "first_stage_model.decoder.up.0.block.2.conv2.weight": [128, 128, 3, 3],
    "first_stage_model.decoder.up.3.upsample.conv.weight": [512, 512, 3, 3],
    "first_stage_model.decoder.mid.attn_1.proj_out.weight": [512, 512, 1, 1],
    "first_stage_model.quant_conv.weight": [8, 8, 1, 1],
    "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight": [49408, 768],
    "conditioner.embedders.0.transformer.text_model.embeddings.position_ids": [1, 77],
    "conditioner.embedders.0.transformer.text_model.encoder.layers.11.self_attn.q_proj.weight": [768, 768],
    "conditioner.embedders.1.model.token_embedding.weight": [49408, 1280],
    "conditioner.embedders.1.model.positional_embedding": [77, 1280],
    "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight": [3840, 1280],
    "conditioner.embedders.1.model.transformer.resblocks.31.attn.in_proj_bias": [3840],
    "conditioner.embedders.1.model.transformer.resblocks.0.attn.out_proj.weight": [1280, 1280],
    "conditioner.embedders.1.model.transformer.resblocks.0.mlp.c_fc.weight": [5120, 1280],
    "conditioner.embedders.1.model.transformer.resblocks.0.ln_1.weight": [1280],
    "conditioner.embedders.1.model.ln_final.weight": [1280],
    "conditioner.embedders.1.model.text_projection": [1280, 1280],
    "conditioner.embedders.1.model.logit_scale": [],
}
SD15_KEYS = {
    "model.diffusion_model.input_blocks.1.1.proj_in.weight": [320, 320, 1, 1],
    "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight": [640, 640],
    "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight": [640, 768],
    "model.diffusion_model.input_blocks.9.0.op.weight": [1280, 1280, 3, 3],
    "model.diffusion_model.input_blocks.11.0.out_layers.3.weight": [1280, 1280, 3, 3],
    "model.diffusion_model.output_blocks.2.1.conv.weight": [1280, 1280, 3, 3],
    "model.diffusion_model.output_blocks.5.2.conv.weight": [1280, 1280, 3, 3],
    "model.diffusion_model.output_blocks.8.2.conv.weight": [640, 640, 3, 3],
    "model.diffusion_model.output_blocks.11.0.skip_connection.weight": [320, 640, 1, 1],
    "model.diffusion_model.out.2.weight": [4, 320, 3, 3],
    "first_stage_model.encoder.down.0.block.0.conv1.weight": [128, 128, 3, 3],
    "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": [49408, 768],
    "cond_stage_model.transformer.text_model.embeddings.position_ids": [1, 77],
    "cond_stage_model.transformer.text_model.final_layer_norm.weight": [768],
}
# Keys per part: UNet/VAE map 1:1 from diffusers; CLIP-L = 196 HF tensors + position_ids;
# CLIP-G = 32 resblocks × 12 + token/positional embedding, ln_final ×2, text_projection, logit_scale.
SDXL_COUNTS = {"unet": 1680, "vae": 248, "text_encoder": 197, "text_encoder_2": 32 * 12 + 6}
SD15_COUNTS = {"unet": 686, "vae": 248, "text_encoder": 197}


@pytest.mark.parametrize("arch, keys, counts", [("sdxl", SDXL_KEYS, SDXL_COUNTS), ("sd15", SD15_KEYS, SD15_COUNTS)])
def test_full_size_key_names_shapes_and_counts(full_size, arch, keys, counts):
    _, sd = full_size[arch]
    for key, shape in keys.items():
        assert key in sd, key
        assert list(sd[key].shape) == shape, key
    per_part = {part: sum(k.startswith(p) for k in sd) for part, p in part_prefixes(arch).items()}
    assert per_part == counts
    assert len(sd) == sum(counts.values())  # nothing outside the four prefixes
    assert sum(counts.values()) == {"sdxl": 2515, "sd15": 1131}[arch]


def test_full_size_sd15_has_no_sdxl_keys(full_size):
    _, sd = full_size["sd15"]
    assert not any(k.startswith("conditioner.") or ".label_emb." in k for k in sd)


@pytest.mark.parametrize("arch, expected_type", [("sdxl", "xl_base"), ("sd15", "v1")])
def test_diffusers_recognises_full_size_output(full_size, arch, expected_type):
    _, sd = full_size[arch]
    assert infer_diffusers_model_type(sd) == expected_type


@pytest.mark.parametrize("arch", ["sdxl", "sd15"])
def test_diffusers_converter_maps_full_size_output_back(full_size, arch):
    """diffusers' single-file → diffusers converter on our output gives every diffusers key with its shape."""
    components, sd = full_size[arch]
    unet = convert_ldm_unet_checkpoint(sd, dict(components.unet.config))
    ref = components.unet.state_dict()
    assert set(unet) == set(ref)
    assert all(unet[k].shape == ref[k].shape for k in ref)
    vae = convert_ldm_vae_checkpoint(sd, dict(components.vae.config))
    ref = components.vae.state_dict()
    assert set(vae) == set(ref)
    assert all(vae[k].numel() == ref[k].numel() for k in ref)  # 1×1 conv ↔ linear is reshaped at load
    if arch == "sdxl":
        clip_g = convert_open_clip_checkpoint(components.text_encoders[1], sd, prefix="conditioner.embedders.1.model.")
        ref = components.text_encoders[1].state_dict()
        assert set(clip_g) == set(ref)
        assert all(clip_g[k].shape == ref[k].shape for k in ref)


def _assert_converts_back_exactly(components):
    sd = components_to_ldm(components)
    for module, converted in [
        (components.unet, convert_ldm_unet_checkpoint(sd, dict(components.unet.config))),
        (components.vae, convert_ldm_vae_checkpoint(sd, dict(components.vae.config))),
    ]:
        ref = module.state_dict()
        assert set(converted) == set(ref)
        for key, tensor in ref.items():
            assert torch.equal(converted[key].reshape(tensor.shape), tensor), key
    if components.is_sdxl:
        te = components.text_encoders[1]
        converted = convert_open_clip_checkpoint(te, sd, prefix="conditioner.embedders.1.model.")
        assert all(torch.equal(converted[k], v) for k, v in te.state_dict().items())


def _tiny_sd15_four_levels():
    """SD1.5's real block structure (3 attention levels + 1 plain, 4 levels) at tiny width; 2-level VAE."""
    from diffusers import UNet2DConditionModel

    components = tiny_sd15(vae_channels=(32, 32))
    components.unet = UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(32, 32, 64, 64),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        layers_per_block=2,
        attention_head_dim=8,
        cross_attention_dim=32,
        norm_num_groups=16,
    )
    return components


@pytest.mark.parametrize(
    "build",
    [
        lambda: tiny_sdxl(),
        lambda: tiny_sdxl(layers_per_block=1, transformer_layers_per_block=(1, 2, 3)),
        lambda: tiny_sd15(layers_per_block=3),
        lambda: _tiny_sd15_four_levels(),
    ],
    ids=["sdxl", "sdxl-lpb1-tlpb123", "sd15-lpb3", "sd15-4-levels"],
)
def test_any_block_layout_converts_back_bit_identically(build):
    """Index mapping derived from the config: other layers_per_block / level counts also invert exactly."""
    _assert_converts_back_exactly(build())


def test_torch_compiled_unet_writes_the_same_keys():
    components = tiny_sd15()
    plain = components_to_ldm(components)
    components.unet = torch.compile(components.unet)  # wrapper only; nothing is compiled until a forward
    assert list(components_to_ldm(components)) == list(plain)
