"""The sampling engine: many images (prompts × seeds × settings) from one model in as few pipeline calls as possible.

Every image owns one `torch.Generator` seeded with its seed (CPU, like A1111's CPU RNG source); diffusers draws the
image's initial noise and any per-step noise (ancestral / SDE samplers) from it alone. Prompts are parsed with
A1111's emphasis syntax and encoded once per distinct text per batch; the pipeline gets the embeddings. Requests
are batched only with others that share every setting the pipeline call takes, *and* the same number of 75-token
chunks: padding a prompt with extra empty chunks would change its image. So an image is the same whether it is
rendered alone or in a batch (up to float rounding)."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, replace

import torch
from PIL import Image
from tqdm import tqdm

from tunelab.errors import TunelabError
from tunelab.evaluate.infotext import Infotext
from tunelab.evaluate.prompt_syntax import parse_prompt
from tunelab.evaluate.samplers import check_sampler, make_scheduler
from tunelab.evaluate.text_kv_cache import text_kv_cache
from tunelab.models.components import ModelComponents
from tunelab.models.io import quiet_libraries
from tunelab.models.text_conditioning import chunk_token_ids, encode_prompts


EMPTY_AS_ZEROS = "Empty prompt as zeros"  # infotext key of --empty-as-zeros / empty_prompt_as_zeros


@dataclass(frozen=True)
class SampleRequest:
    """One image. `prompt` / `negative_prompt` use A1111 syntax; "" prompt = unconditional generation."""

    prompt: str
    seed: int
    negative_prompt: str = ""
    steps: int = 20
    cfg_scale: float = 7.0
    sampler: str = "Euler a"
    width: int = 512
    height: int = 512
    clip_skip: int | None = None

    def __post_init__(self) -> None:
        problem = settings_problem(self)
        if problem:
            raise TunelabError(problem)

    def settings_key(self) -> tuple:
        """What one pipeline call must share."""
        return (self.steps, self.cfg_scale, self.sampler, self.width, self.height, self.clip_skip)

    def with_(self, **changes) -> "SampleRequest":
        return replace(self, **changes)

    def infotext(self, model: str = "", model_hash: str = "", empty_as_zeros: bool = False) -> Infotext:
        """`empty_as_zeros`: the engine encoded "" as the zero embedding; recorded when this image had an empty
        prompt or negative prompt (it changed the image: a reader needs it to reproduce it)."""
        zeros = empty_as_zeros and "" in (self.prompt, self.negative_prompt)
        return Infotext(
            prompt=self.prompt,
            negative_prompt=self.negative_prompt,
            steps=self.steps,
            sampler=self.sampler,
            cfg_scale=self.cfg_scale,
            seed=self.seed,
            width=self.width,
            height=self.height,
            model_hash=model_hash,
            model=model,
            clip_skip=self.clip_skip,
            extra={EMPTY_AS_ZEROS: "True"} if zeros else {},
        )


MAX_SEED = 2**32 - 1  # A1111 draws its random seeds below 2³² and other tools store seeds as 32-bit numbers


def settings_problem(request: SampleRequest) -> str | None:
    """Why the pipeline cannot render `request` (one line), before any model is loaded; None when it can."""
    for name in ("width", "height"):
        value = getattr(request, name)
        if value < 8 or value % 8:
            nearest = max(8, round(value / 8) * 8)
            return f"{name} {value}: must be a multiple of 8 (the VAE works on 8×8-pixel blocks), e.g. {nearest}"
    if not 0 <= request.seed <= MAX_SEED:
        return (f"seed {request.seed}: must be 0 to {MAX_SEED} (2³²−1, the range A1111's random seeds come from); "
                "a prompt's further images take the next seeds, so start low enough")
    if request.steps < 1:
        return f"steps {request.steps}: must be at least 1"
    if not math.isfinite(request.cfg_scale):
        return f"cfg_scale {request.cfg_scale}: must be a finite number"
    if request.clip_skip is not None and request.clip_skip < 1:
        return f"clip_skip {request.clip_skip}: must be at least 1 (1 = the last layer)"
    return None


def check_clip_skip(request: SampleRequest, components: ModelComponents) -> None:
    """clip_skip counts text-encoder layers from the end: it cannot exceed the model's layers."""
    layers = min(encoder.config.num_hidden_layers for encoder in components.text_encoders)
    if request.clip_skip is not None and request.clip_skip > layers:
        raise TunelabError(f"clip_skip {request.clip_skip}: this model's text encoder has {layers} layers")


class SamplingEngine:
    """Renders `SampleRequest`s with one model. `empty_prompt_as_zeros`: encode "" as the all-zero embedding (for
    models trained with captions dropped to zeros) instead of as the empty text (A1111)."""

    def __init__(
        self,
        components: ModelComponents,
        *,
        batch_size: int = 16,
        max_chunks: int = 3,
        empty_prompt_as_zeros: bool = False,
        progress: bool = True,
    ):
        self.components = components
        self.batch_size = batch_size
        self.max_chunks = max_chunks
        self.empty_prompt_as_zeros = empty_prompt_as_zeros
        self.progress = progress
        with quiet_libraries():  # building a pipeline makes transformers warn that torchvision is missing: noise
            self._pipeline = components.pipeline()
        self._pipeline.set_progress_bar_config(disable=True)

    def chunk_count(self, prompt: str) -> int:
        segments = parse_prompt(prompt)
        return len(chunk_token_ids(self.components.tokenizers[0], segments, self.max_chunks))

    def plan_batches(self, requests: list[SampleRequest]) -> list[list[int]]:
        """Indices of `requests` grouped into pipeline calls (same settings and chunk count, ≤ batch_size each)."""
        chunks: dict[str, int] = {}
        groups: dict[tuple, list[int]] = defaultdict(list)
        for i, request in enumerate(requests):
            check_sampler(request.sampler)
            check_clip_skip(request, self.components)
            for text in (request.prompt, request.negative_prompt):
                if text not in chunks:
                    chunks[text] = self.chunk_count(text)
            n = max(chunks[request.prompt], chunks[request.negative_prompt])
            groups[(*request.settings_key(), n)].append(i)
        return [group[k : k + self.batch_size] for group in groups.values() for k in range(0, len(group), self.batch_size)]

    @torch.no_grad()
    def render(self, requests: list[SampleRequest]) -> list[Image.Image]:
        """Images in the order of `requests`."""
        images: list[Image.Image | None] = [None] * len(requests)
        batches = self.plan_batches(requests)
        progress = tqdm(total=len(requests), desc="sampling", unit="img", disable=not self.progress)
        with progress as bar, text_kv_cache(self.components.unet):
            for batch in batches:
                for i, image in zip(batch, self._render_batch([requests[i] for i in batch])):
                    images[i] = image
                bar.update(len(batch))
        return images

    def _encode(self, texts: list[str], clip_skip: int | None):
        """Encode each distinct text once → (embeds, pooled) indexed like `texts`."""
        distinct = list(dict.fromkeys(texts))
        prompts = ["" if t == "" else parse_prompt(t) for t in distinct]  # "" stays a str so it can map to zeros
        emb = encode_prompts(
            self.components, prompts, clip_skip=clip_skip, max_chunks=self.max_chunks, empty_as_zeros=self.empty_prompt_as_zeros
        )
        index = torch.tensor([distinct.index(t) for t in texts], device=emb.prompt_embeds.device)
        pooled = emb.pooled_prompt_embeds[index] if emb.pooled_prompt_embeds is not None else None
        return emb.prompt_embeds[index], pooled

    def _render_batch(self, batch: list[SampleRequest]) -> list[Image.Image]:
        first = batch[0]
        n = len(batch)
        embeds, pooled = self._encode([r.prompt for r in batch] + [r.negative_prompt for r in batch], first.clip_skip)
        conditioning = dict(prompt_embeds=embeds[:n], negative_prompt_embeds=embeds[n:])
        if pooled is not None:
            conditioning.update(pooled_prompt_embeds=pooled[:n], negative_pooled_prompt_embeds=pooled[n:])
        pipe = self._pipeline
        pipe.scheduler = make_scheduler(first.sampler, self.components.scheduler)  # fresh: schedulers keep state
        return pipe(
            **conditioning,
            num_inference_steps=first.steps,
            guidance_scale=first.cfg_scale,
            width=first.width,
            height=first.height,
            generator=[torch.Generator("cpu").manual_seed(r.seed) for r in batch],
            output_type="pil",
        ).images
