"""`tunelab sweep SWEEP.toml`: train one run config under several settings (a matrix of overrides and/or named
variants), then validate, grid and report them side by side, so "which setting was best" is answered with numbers.

  config.py   SWEEP.toml and the variants it makes (names, overrides, each variant's RunConfig)
  record.py   sweep.json: each variant's status, wall time and final checkpoint, rewritten after every variant
  runner.py   train the variants one after another (skip the finished, resume the interrupted), then measure
  grid.py     the sweep's XYZ grid: base + every finished variant as columns
  summary.py  the final table (and --dry-run's listing)"""
