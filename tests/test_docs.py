"""Run the Python examples of docs/*.md as doctests."""

from __future__ import annotations

import doctest
from pathlib import Path

import pytest

DOCS = sorted((Path(__file__).resolve().parent.parent / "docs").glob("*.md"))


def test_docs_exist():
    assert any(p.name == "nll-or-cross-entropy.md" for p in DOCS)


@pytest.mark.parametrize("path", DOCS, ids=[p.name for p in DOCS])
def test_doctests(path):
    result = doctest.testfile(
        str(path),
        module_relative=False,
        verbose=False,
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
    )
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {path}"


@pytest.mark.parametrize("module", ["fastnll._losses", "fastnll._softmax", "fastnll.evaluate"])
def test_docstring_examples(module):
    """The examples in the public functions' docstrings run and give what they show."""
    import importlib

    mod = importlib.import_module(module)
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {module}"
    if module != "fastnll.evaluate":
        assert result.attempted >= 3
