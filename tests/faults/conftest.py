"""Fixtures of the fault suite (fault_setup.py)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from fault_setup import tiny_model_folder, toy_data  # noqa: E402,F401  fixtures
