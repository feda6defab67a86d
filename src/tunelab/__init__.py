"""tunelab: fine-tune SDXL / SD1.5 diffusion models and measure what each run learned and forgot."""

__version__ = "0.1.0"
