"""Selection: a method's order and the budget -> the units to prune (heads, KV groups, neurons)."""
