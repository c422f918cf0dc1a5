"""Calibration: the shared context (parses, attention statistics, tokenized batches) every method reads."""
