"""Block-wise UNet learning rates, as sd-scripts' `--block_lr` numbers them (SDXL: 23 values).

Blocks in the original (LDM) layout: 0 = time and label (size) embeddings, then `input_blocks.0..8`, `middle_block.0..2`,
`output_blocks.0..8`, and last `out` (the final norm and conv). A value is that block's learning rate; 0 freezes it.
The numbering comes from the single-file key map (`models.ldm_layout`), so it is the numbering users see in
A1111 / ComfyUI block-merge tools, and it works for any block count (SD1.5: 29 blocks)."""

from __future__ import annotations

import torch

from tunelab.errors import TunelabError
from tunelab.models.ldm_layout import unet_module_map


def unet_block_labels(unet: torch.nn.Module) -> list[str]:
    """The blocks in `--block_lr` order: ["time/label embedding", "input_blocks.0", …, "middle_block.2", …, "out"]."""
    ldm_blocks = {_ldm_block(path) for path in unet_module_map(unet.config).values()}
    inputs = sorted(int(b.split(".")[1]) for b in ldm_blocks if b.startswith("input_blocks."))
    outputs = sorted(int(b.split(".")[1]) for b in ldm_blocks if b.startswith("output_blocks."))
    return (["time/label embedding"] + [f"input_blocks.{i}" for i in inputs]
            + [f"middle_block.{i}" for i in range(3)] + [f"output_blocks.{i}" for i in outputs] + ["out"])


def unet_parameter_blocks(unet: torch.nn.Module) -> dict[str, int]:
    """diffusers parameter name → its block's position in `unet_block_labels`."""
    position = {label: i for i, label in enumerate(unet_block_labels(unet))}
    modules = unet_module_map(unet.config)
    blocks = {}
    for name, _ in unet.named_parameters():
        module = next((m for m in modules if name.startswith(m + ".")), None)
        if module is None:
            raise TunelabError(f"unet.block_lr: parameter {name} has no block in the single-file layout")
        ldm = _ldm_block(modules[module])
        blocks[name] = position["time/label embedding" if ldm in ("time_embed", "label_emb") else ldm]
    return blocks


def block_learning_rates(unet: torch.nn.Module, block_lr: list[float]) -> dict[str, float]:
    """Parameter name → learning rate from the per-block list (checked against this UNet's block count)."""
    labels = unet_block_labels(unet)
    if len(block_lr) != len(labels):
        raise TunelabError(f"unet.block_lr: {len(block_lr)} values given, this UNet has {len(labels)} blocks "
                           f"({labels[0]}, {labels[1]} … {labels[-1]}; SDXL: 23)")
    return {name: block_lr[block] for name, block in unet_parameter_blocks(unet).items()}


def _ldm_block(ldm_module: str) -> str:
    """"input_blocks.4.1" → "input_blocks.4"; "time_embed.0" → "time_embed"; "out.2" → "out"."""
    pieces = ldm_module.split(".")
    return ".".join(pieces[:2]) if pieces[0] in ("input_blocks", "middle_block", "output_blocks") else pieces[0]
