"""Options that several subcommands share, defined once so their names, defaults and help agree.
(Not a command: the CLI imports it with the command modules, and it registers nothing.)"""
from __future__ import annotations


import typer

MODEL = typer.Option(None, help="Model folder or hub id (default: the bundled all-MiniLM-L6-v2).")
PARSES = typer.Option(None, help="CoNLL-U file: use its sentences with their gold trees instead of TASK parsed by spaCy.")
K = typer.Option(5, help="SAP: number of top dependency labels.")
THRESHOLD = typer.Option("global-mean", help="SAP: global-mean, layer-mean, head-mean, quantile:Q or a number.")
DIRECTION = typer.Option("dep2head", help="SAP: dep2head, head2dep or max.")
KEEP_PUNCT = typer.Option(False, "--keep-punct", help="SAP: count punct arcs too.")
CALIB_SIZE = typer.Option(512, help="Calibration examples sampled (seeded) from train, or from the --parses sentences.")
SEED = typer.Option(0, help="Seed for the calibration sample and random methods.")
MAX_LENGTH = typer.Option(128, help="Max tokens per input.")
BATCH_SIZE = typer.Option(32, help="Batch size for attention statistics.")
PARSER = typer.Option("en_core_web_sm", help="spaCy pipeline for dependency parses.")
GLUE_DIR = typer.Option(None, help="GLUE folder (glue_data layout); default $SYNPRUNE_GLUE_DIR or ../shared/data/glue.")
TEXT_COL = typer.Option(None, help="Data file: text column.")
TEXT_PAIR_COL = typer.Option(None, help="Data file: second text column.")
LABEL_COL = typer.Option(None, help="Data file: label column.")
QUIET = typer.Option(False, "--quiet", "-q", help="No progress bars.")

__all__ = ["MODEL", "PARSES", "K", "THRESHOLD", "DIRECTION", "KEEP_PUNCT", "CALIB_SIZE", "SEED", "MAX_LENGTH",
           "BATCH_SIZE", "PARSER", "GLUE_DIR", "TEXT_COL", "TEXT_PAIR_COL", "LABEL_COL", "QUIET"]
