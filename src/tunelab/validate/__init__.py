"""Deterministic validation loss per timestep band, on held-out, retention and user-folder sets."""
