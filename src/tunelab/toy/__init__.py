"""The toy world: procedural 32×32 tagged images, an analytic judge, and a tiny SDXL-architecture base model.

- `concepts`: colours, shapes, locations, characters, tags and their categories (`tag_categories()`).
- `world`: the worlds (base, finetune, mix, retention, vae) → `ToyItem`s (image, tags, scene) or a dataset folder.
- `judge`: pixels → label + score per concept family.
- `probes.toml` + `evaluation`: the toy world's probes file (targets zorb and kiko, retain concepts, the empty
  prompt) and `score_toy_models`, `tunelab score` with it.
- `score_judge`: the analytic judge behind the score stage's judge interface (`--judge toy`).
- `tagger`: `tunelab toy tagger`, a small booru-tag classifier written in the WD tagger layout.
- `findings`: the practitioner's statements tested on a scored demo folder (`tunelab findings`).
- `base_recipe`: `tunelab toy base`, pretraining the base model from scratch.
- `base_model`: `load_toy_base()`, the built base shipped in `toy/base/`."""
