"""The score stage: a probes file (what to prompt, what a judge must see), judges (toy pixel rules, WD tagger, CLIP),
`tunelab score` (same seeds for every model, judged image for image), intervals and verdicts. The toy world's judge,
probes and findings live beside the stages, in `tunelab.toy`."""
