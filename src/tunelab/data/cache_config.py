"""The `[data.cache]` table: where latent and text-embedding caches live and how they are written."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from tunelab.config import StrictModel


class CacheConfig(StrictModel):
    dir: Path = Path("cache")  # relative to the TOML file's folder; holds latents/ and text/
    latents: bool = False  # train from cached VAE latents (sd-scripts --cache_latents_to_disk)
    text_embeddings: bool = False  # cache text-encoder outputs (refused when that would be wrong; see cache.py)
    shard_items: int = Field(256, ge=1)  # items per safetensors shard: the unit written, resumed and verified
    batch_size: int = Field(8, ge=1)  # images (or prompts) encoded at once
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"  # stored precision

    def resolved(self, base_dir: Path) -> "CacheConfig":
        return self.model_copy(update={"dir": (Path(base_dir) / self.dir).resolve()})
