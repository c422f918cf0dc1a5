"""Candidate Filtering: re-check the top of a method's ranking against the task metric."""
