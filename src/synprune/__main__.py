"""`python -m synprune ...` = the `synprune` command (handy from a source checkout or a worktree)."""
from .cli import main

main()
