"""User-facing errors: one line that names the problem and the fix, shown without a traceback."""


class SynpruneError(Exception):
    """Bad input or environment. The CLI prints `error: <message>` and exits with status 2."""
