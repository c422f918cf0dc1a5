"""Runs: one pruning run end to end, the sweep, its worker pool, and the run record."""
