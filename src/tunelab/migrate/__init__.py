"""Migration from other trainers: `tunelab import sd-scripts` (kohya sd-scripts' `sdxl_train.py` flags → run config)."""
