"""A griffe extension for the API reference (mkdocs.yml: mkdocstrings' `extensions`).

The docstrings head their doctests `Example:`. Google style knows `Examples:` as the section of
`>>>` blocks and would render `Example:` as an admonition of plain Markdown, where `>>>` lines
become nested block quotes. This extension renames the heading before the docstrings are
parsed, so the examples render as interactive Python code.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

HEADING = re.compile(r"^(\s*)Example:[ \t]*$", re.MULTILINE)


class ExampleSections(griffe.Extension):
    """Rename each `Example:` heading of a docstring to `Examples:`."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = HEADING.sub(r"\1Examples:", obj.docstring.value)
