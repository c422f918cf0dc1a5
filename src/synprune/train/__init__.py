"""Training of task models (fine-tuning) for pruning."""
