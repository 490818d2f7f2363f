"""The `Example:` sections of the public API's docstrings run as doctests."""

from __future__ import annotations

import doctest
import importlib

import pytest

DOCUMENTED = (
    "wxens.stores",
    "wxens.data_pipeline.analysis_store",
    "wxens.data_pipeline.training_data",
    "wxens.data_pipeline.truth",
    "wxens.models.kinds",
    "wxens.forecast.archive",
    "wxens.forecast.calibrate",
    "wxens.forecast.ensemble",
    *(
        f"wxens.verification.{name}"
        for name in (
            "aggregation",
            "errors",
            "extremes",
            "metrics",
            "probability",
            "report",
            "scheduler",
            "scores",
            "spectra",
            "stats_store",
            "targets",
            "verify",
        )
    ),
)
"""Modules whose docstring examples are part of the documentation."""


@pytest.mark.parametrize("name", DOCUMENTED)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    result = doctest.testmod(module, optionflags=flags, verbose=False)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples of {name} failed"
