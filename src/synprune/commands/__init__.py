"""Subcommands of `synprune`: one module each, registering on `synprune.cli.app`."""
