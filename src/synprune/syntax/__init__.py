"""Syntax: dependency parses, label statistics, word/sub-token alignment, gold trees, dependency sources."""
