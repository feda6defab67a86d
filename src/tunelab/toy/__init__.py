"""The toy world: procedural 32×32 tagged images, an analytic judge, and a tiny SDXL-architecture base model.

- `concepts`: colours, shapes, locations, characters, tags and their categories (`tag_categories()`).
- `world`: the worlds (base, finetune, mix, retention, vae) → `ToyItem`s (image, tags, scene) or a dataset folder.
- `judge`: pixels → label + score per concept family.
- `evaluation`: evaluation prompts per concept group (known / half-known / unknown / retention) and their rates.
- `base_recipe`: `tunelab toy base`, pretraining the base model from scratch.
- `base_model`: `load_toy_base()`, the built base shipped in `toy/base/`."""
