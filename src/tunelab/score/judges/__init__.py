"""Judges: images + what to see → per-image pass / fail and a score in [0, 1]. See `base.py` for the interface."""
