"""The one exception type for bad input: what a user typed or pointed at, as opposed to a bug.

Every command line of the project turns a ``UsageError`` into one line on the console and exit status 2
(``landscape_core.cli.run_command``); any other exception is a bug and keeps its traceback (exit status 1).
Validation raises it: the typed configs' ``__post_init__``, the sweep options, unreadable stores, missing data.
Numerical functions called with bad arguments by code (not by a user) raise plain ``ValueError``.
"""

from __future__ import annotations

__all__ = ["UsageError"]


class UsageError(ValueError):
    """Bad input from the user: printed as one line, exit status 2. A ``ValueError``, so callers that validate
    arguments generically still catch it."""
