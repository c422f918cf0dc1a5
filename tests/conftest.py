"""Test-wide settings: set before torch is imported so that they take effect."""
from __future__ import annotations

import os

# The tests run tiny models, often beside other jobs on the same cores: sleeping (not spinning) OpenMP
# threads keep them from slowing each other down several-fold.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
