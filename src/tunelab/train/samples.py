"""Sample images during training: fixed prompts × fixed seeds at a cadence, through the evaluation engine, written
as PNGs (with A1111 infotext) under `samples/step-NNNNNN/` and shown in TensorBoard."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tunelab.train.config import RunConfig


class SampleRenderer:
    def __init__(self, config: RunConfig, folder: Path, *, enabled: bool):
        self.config = config.logging
        self.folder = Path(folder)
        self.enabled = enabled
        self.empty_as_zeros = config.train.empty_caption_as_zeros
        self.clip_skip = config.train.clip_skip

    def due(self, step: int) -> bool:
        return self.enabled and step % self.config.sample_every_n_steps == 0

    def requests(self, components):
        from tunelab.evaluate.sampling import SampleRequest

        factor = 2 ** (len(components.vae.config.block_out_channels) - 1)
        size = self.config.sample_size or components.unet.config.sample_size * factor
        return [SampleRequest(prompt=p, seed=s, steps=self.config.sample_steps, cfg_scale=self.config.sample_cfg_scale,
                              sampler=self.config.sample_sampler, width=size, height=size, clip_skip=self.clip_skip)
                for p in self.config.sample_prompts for s in self.config.sample_seeds]

    @torch.no_grad()
    def render(self, components, step: int, logger) -> None:
        from tunelab.evaluate.infotext import save_png_with_infotext
        from tunelab.evaluate.sampling import SamplingEngine

        modes = {name: m.training for name, m in components.named_parts().items()}
        for module in components.named_parts().values():
            module.eval()
        try:
            requests = self.requests(components)
            engine = SamplingEngine(components, empty_prompt_as_zeros=self.empty_as_zeros, progress=False)
            images = engine.render(requests)
        finally:
            for name, module in components.named_parts().items():
                module.train(modes[name])
        folder = self.folder / f"step-{step:06d}"
        for i, (request, image) in enumerate(zip(requests, images)):
            save_png_with_infotext(image, folder / f"{i:03d}-seed{request.seed}.png",
                                   request.infotext(model=f"step {step}", empty_as_zeros=self.empty_as_zeros))
        if logger.writer is not None:
            grid = np.stack([np.asarray(image) for image in images])
            logger.writer.add_images("samples", grid, step, dataformats="NHWC")
