"""synprune: prune transformer attention heads without retraining, and explain what was kept."""
__version__ = "0.1.0"
