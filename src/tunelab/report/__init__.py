"""The report stage: one HTML page per run folder (scoreboard, validation loss per band, training curves, grids)."""
