"""`ModelComponents`: the parts of a text-to-image model, whatever file they came from.

Every stage (trainer, validation, sampling, merge) works on this one structure, so a model loaded from a diffusers
folder, an A1111 single file or a tiny builder is used the same way."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

Architecture = Literal["sdxl", "sd15"]


@dataclass
class ModelComponents:
    architecture: Architecture
    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoders: list[torch.nn.Module]  # SD1.5: [CLIP-L]; SDXL: [CLIP-L, CLIP-G with projection]
    tokenizers: list  # one per text encoder, same order
    scheduler: object  # a diffusers scheduler (the one used for sampling)
    source: str = ""  # where it was loaded from, for messages and infotext
    extra: dict = field(default_factory=dict)

    @property
    def is_sdxl(self) -> bool:
        return self.architecture == "sdxl"

    def named_parts(self) -> dict[str, torch.nn.Module]:
        """Trainable modules by the names used everywhere (config, logs, info): unet, vae, text_encoder, text_encoder_2."""
        parts = {"unet": self.unet, "vae": self.vae}
        for i, te in enumerate(self.text_encoders):
            parts["text_encoder" if i == 0 else f"text_encoder_{i + 1}"] = te
        return parts

    def to(self, device=None, dtype=None) -> "ModelComponents":
        # Pass only what is set: diffusers warns about a dtype cast whenever `dtype` is among the arguments.
        kwargs = {k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None}
        for module in self.named_parts().values():
            module.to(**kwargs)
        return self

    def pipeline(self, scheduler=None):
        """A diffusers pipeline sharing these modules (no copies)."""
        from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

        scheduler = scheduler or self.scheduler
        if self.is_sdxl:
            return StableDiffusionXLPipeline(
                vae=self.vae,
                text_encoder=self.text_encoders[0],
                text_encoder_2=self.text_encoders[1],
                tokenizer=self.tokenizers[0],
                tokenizer_2=self.tokenizers[1],
                unet=self.unet,
                scheduler=scheduler,
                force_zeros_for_empty_prompt=self.extra.get("force_zeros_for_empty_prompt", True),
            )
        return StableDiffusionPipeline(
            vae=self.vae,
            text_encoder=self.text_encoders[0],
            tokenizer=self.tokenizers[0],
            unet=self.unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
