"""Tasks and splits: GLUE, custom files and language-modelling text; truncation; metrics."""
