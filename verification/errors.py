"""The one exception type of the verification API."""

from __future__ import annotations


class ScoreError(ValueError):
    """Bad input to scoring: the message is one line naming the input and the culprit.

    Raised by `score`, `verify`, `report` and the functions under them for API misuse (a
    missing dimension, an unknown score or region, a grid mismatch, missing values), instead
    of a traceback from deep inside xarray. A `ValueError`, so `except ValueError` catches it.

    Example:
        >>> try:
        ...     raise ScoreError("forecast has no 'member' dimension")
        ... except ValueError as error:
        ...     print(f"{type(error).__name__}: {error}")
        ScoreError: forecast has no 'member' dimension
    """
