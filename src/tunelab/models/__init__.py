"""Model components: tokenizers, tiny builders, loading and saving (diffusers folders and single files)."""
